"""Real speech: espeak-ng speaking the tiny model's commentary on the demo clip into a PulseAudio null
sink started here, recorded back from the sink's monitor; and the pacing rule with a voice slower
than the stream. `.ci/run` installs espeak-ng, pulseaudio and pulseaudio-utils; where one is missing
outside CI these tests are skipped with the install command (in CI they fail, livehelpers.need).

How a line is found: espeak-ng is deterministic and the WAV holds exactly the samples it wrote, so
each cue's text, synthesized again here, is either in the WAV sample for sample (spoken; where it
starts is when it was heard, on the stream clock) or nowhere (dropped).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import wave

import numpy as np
import pytest

from clihelpers import CLIP, ROOT
from core.speech.clock import StreamClock
from core.speech.samples import to_pcm16
from core.speech.speaker import Speaker
from core.types import Commentary
from livehelpers import SoundServer, need

RATE = 22_050  # espeak-ng's


def need_espeak() -> None:
    need(shutil.which("espeak-ng") is not None, "espeak-ng: apt-get install espeak-ng")


def locate(haystack: np.ndarray, needle: np.ndarray) -> tuple[int, float]:
    """Where `needle` best matches in `haystack` and how well (normalized cross-correlation, 1 = exact)."""
    haystack, needle = haystack.astype(np.float64), needle.astype(np.float64)
    if len(needle) > len(haystack):
        return 0, 0.0
    size = 1 << (len(haystack) + len(needle) - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(haystack, size) * np.conj(np.fft.rfft(needle, size)), size)
    corr = corr[: len(haystack) - len(needle) + 1]
    power = np.concatenate([[0.0], np.cumsum(haystack**2)])
    energy = np.sqrt(np.maximum(power[len(needle) :] - power[: -len(needle)], 1e-12))
    score = corr / (energy * np.linalg.norm(needle) + 1e-12)
    best = int(np.argmax(score))
    return best, float(score[best])


def read_wav(path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64) / 32768


@pytest.fixture(scope="module")
def spoken_run(tiny_dir, tmp_path_factory):
    """`python -m core run --speak --voice espeak --speech-wav` on the demo clip with the tiny model,
    heard on a null sink whose monitor `parec` records. Short replies (6 tokens) make lines of 1.5 to
    3 s, longer than the 1 s between them, so some are spoken and some are dropped."""
    need_espeak()
    need(shutil.which("parec") is not None, "parec: apt-get install pulseaudio-utils")
    folder = tmp_path_factory.mktemp("speech")
    server = SoundServer(folder).start()
    env = {**os.environ, **server.env, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    heard = folder / "heard.raw"
    try:
        with open(heard, "wb") as sink:
            recorder = subprocess.Popen(
                ["parec", "-d", "virt.monitor", "--format=float32le", f"--rate={RATE}", "--channels=1"],
                stdout=sink,
                env=env,
            )
            run = subprocess.run(
                [sys.executable, "-m", "core", "run", "--source", str(CLIP), "--model", "tiny", "--quiet"]
                + ["--speak", "--voice", "espeak", "--speech-wav", str(folder / "out.wav")]
                + ["--jsonl", str(folder / "cues.jsonl"), "--max-new-tokens", "6", "--device", "cpu"],
                capture_output=True,
                text=True,
                timeout=180,
                env=env,
                cwd=ROOT,
            )
            time.sleep(0.3)
            recorder.send_signal(signal.SIGINT)  # parec writes out what it holds
            recorder.wait(timeout=10)
    finally:
        server.stop()
    assert run.returncode == 0, run.stderr
    cues = [Commentary(**json.loads(line)) for line in (folder / "cues.jsonl").read_text().splitlines()]
    return {
        "cues": cues,
        "wav": read_wav(folder / "out.wav"),
        "heard": np.fromfile(heard, np.float32),
        "stderr": run.stderr,
    }


def spoken_and_dropped(run) -> tuple[list[tuple[Commentary, float, float]], list[Commentary]]:
    """(cue, start s, duration s) of each cue found in the WAV, and the cues not in it."""
    from core.speech.espeak import EspeakVoice

    voice = EspeakVoice()  # as the CLI's: deterministic, so its samples are the WAV's own
    spoken, dropped = [], []
    for cue in run["cues"]:
        samples = np.frombuffer(to_pcm16(voice.synthesize(cue.text)), "<i2") / 32768
        at, score = locate(run["wav"], samples)
        if score > 0.999:
            spoken.append((cue, at / RATE, len(samples) / RATE))
        else:
            assert score < 0.9, f"{cue} is in the WAV only in part ({score:.3f})"
            dropped.append(cue)
    return spoken, dropped


def test_each_spoken_cue_is_heard_within_1_5_s_of_its_start_and_dropped_cues_never(spoken_run):
    spoken, dropped = spoken_and_dropped(spoken_run)
    wav = spoken_run["wav"]
    assert spoken and dropped, "the run must show both (lines longer than the second between them)"
    reported = re.search(r"speech: (\d+) lines spoken, (\d+) dropped", spoken_run["stderr"])
    assert reported and (int(reported[1]), int(reported[2])) == (len(spoken), len(dropped))
    assert len(spoken) + len(dropped) == len(spoken_run["cues"])
    previous_end = 0.0
    for cue, start, duration in spoken:
        assert start >= cue.start  # never before the moment it describes
        if previous_end <= cue.end:  # the speaker was idle when the line came: heard at once
            assert start <= cue.start + 1.5, (cue, start)
        else:  # it waited for the line before it, then was next
            assert start <= previous_end + 0.3, (cue, start, previous_end)
        # The check: speech energy within 1.5 s of the cue's start.
        window = wav[int(cue.start * RATE) : int((cue.start + 1.5) * RATE)]
        assert np.sqrt((window**2).mean()) > 0.01
        previous_end = start + duration
    # Nothing else is in the WAV: silence wherever no spoken line is.
    rest = wav.copy()
    for _, start, duration in spoken:
        rest[round(start * RATE) : round((start + duration) * RATE)] = 0
    assert np.abs(rest).max() == 0
    # A dropped cue came while a line was being spoken, and a newer one came before that line ended.
    for cue in dropped:
        newer = next(c for c in spoken_run["cues"] if c.start > cue.start)
        assert any(s <= cue.end + 0.5 and s + d >= newer.start + 0.5 for _, s, d in spoken), cue


def test_the_speech_heard_on_the_sound_device_is_the_wav(spoken_run):
    """Each spoken line, recorded back from the null sink's monitor, matches the WAV's: normalized
    correlation above 0.9 at its best alignment. The path resamples twice (22.05 kHz to the device's
    44.1 kHz here, back to 22.05 kHz in PulseAudio), both band-limited well above espeak's speech band,
    and measured 0.99 and up; a different line scores under 0.5 (measured 0.17 to 0.40 between the
    tiny model's lines), so 0.9 tells the very line from any other. The lines keep their spacing:
    where each is heard minus where the WAV has it is one constant (the device's latency) within
    150 ms (PulseAudio's buffering through PortAudio's ALSA device varies by line: 80 ms measured)."""
    spoken, _ = spoken_and_dropped(spoken_run)
    heard, wav = spoken_run["heard"], spoken_run["wav"]
    assert np.sqrt((heard**2).mean()) > 0.01, "nothing was heard on the sink"
    offsets = []
    for _, start, duration in spoken:
        line = wav[round(start * RATE) : round((start + duration) * RATE)]
        at, score = locate(heard, line)
        assert score > 0.9, (start, score)
        offsets.append(at / RATE - start)
    assert max(offsets) - min(offsets) < 0.15, offsets


def test_a_voice_slower_than_the_stream_stays_one_line_behind_and_counts_what_it_drops(tmp_path):
    """espeak-ng at 80 words a minute, a line every 0.25 s of about 4 s of speech: spoken first in,
    first out, the lag would grow by almost 4 s a line; with the rule it stays under one line's
    length plus the time between lines, and every line not spoken is counted as dropped."""
    need_espeak()
    from core.speech.espeak import EspeakVoice
    from core.speech.wav import SpeechWav

    voice = EspeakVoice(rate=80)
    clock = StreamClock()
    clock.see(0.0)
    speaker = Speaker(voice, [SpeechWav(tmp_path / "slow.wav", voice.sample_rate)], clock)
    period, count = 0.25, 16
    longest = 0.0
    for k in range(count):
        time.sleep(max(0.0, (k + 1) * period - clock.now()))  # the line of [k p, (k+1) p) comes at its end
        text = f"Line {k}: the ball goes wide of the post."
        longest = max(longest, len(voice.synthesize(text)) / voice.sample_rate)
        speaker.say(Commentary(k * period, (k + 1) * period, text))
        assert speaker.stats().waiting <= 1
    time.sleep(longest + 0.5)  # the waiting line has its turn
    stats = speaker.stats()
    speaker.close(finish=False)
    assert longest > 10 * period  # slower than the stream by far
    assert stats.dropped >= count - 3 and stats.spoken + stats.dropped + stats.waiting == count
    assert stats.max_lag <= longest + 2 * period + 0.5, stats
    assert f"{stats.dropped} dropped" in stats.summary()
