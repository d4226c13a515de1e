"""Recording: MP4 with the commentary burned in and an SRT sidecar, playable after a crash."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import srt

from clihelpers import CLIP, run_cli
from core.errors import StreamVLMError
from core.media.overlay import Overlay, OverlayStyle
from core.media.recorder import Recorder
from core.types import Commentary, Frame

ROOT = Path(__file__).resolve().parents[1]


def decoded(path: Path) -> tuple[list[np.ndarray], float]:
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        duration = container.duration / av.time_base if container.duration else float("nan")
    return frames, duration


def test_recorder_writes_every_frame_with_the_overlay_and_an_srt(tmp_path):
    y, x = np.mgrid[0:180, 0:320]
    background = np.stack([60 + x // 3, 60 + y // 2, 200 - x // 4], axis=-1).astype(np.uint8)  # smooth ramps
    path = tmp_path / "rec.mp4"
    with Recorder(path, fps=10) as recorder:
        for k in range(40):
            recorder.write(Frame(background, k / 10))
            if k == 14:  # the commentary of chunk [0.5, 1.5) arrives; it shows from 1.5 s
                recorder.add(Commentary(0.5, 1.5, "Red breaks down the left"))
        recorder.write(Frame(background, 3.9))  # a repeated time is dropped, not written twice
        assert recorder.codec == "libx264" and recorder.frames == 40
    frames, duration = decoded(path)
    assert len(frames) == 40 and duration == pytest.approx(4.0, abs=0.15)
    band = (slice(130, 180), slice(40, 280))  # where the bottom line is drawn

    def change(frame):
        return np.abs(frame[band].astype(int) - background[band]).mean()

    assert change(frames[10]) < 6  # before 1.5 s: the picture, up to compression
    assert change(frames[20]) > 12  # after: the subtitle band is drawn over it (3x the noise)
    cues = list(srt.parse((tmp_path / "rec.srt").read_text()))
    assert [(c.start.total_seconds(), c.end.total_seconds(), c.content) for c in cues] == [
        (0.5, 1.5, "Red breaks down the left")
    ]


def test_overlay_shows_the_newest_lines_and_fades_old_ones():
    overlay = Overlay(OverlayStyle(max_lines=2, fade_seconds=4.0))
    for k, text in enumerate(["one", "two", "three"]):
        overlay.add(Commentary(k, k + 1, text))
    assert overlay.lines_at(3.0) == [("three", 1.0), ("two", 1.0)]  # newest first, at most two
    assert [t for t, _ in overlay.lines_at(5.5)] == ["three", "two"]
    (text, opacity), *_ = overlay.lines_at(5.5)
    assert text == "three" and 0 < opacity < 1  # fading in its second half of life
    assert overlay.lines_at(7.5) == []
    frame = np.zeros((90, 160, 3), np.uint8)
    assert overlay.draw(frame, 10.0) is frame  # nothing to draw: the frame itself
    for position in ("top", "bottom"):
        drawn = Overlay(OverlayStyle(position=position))
        drawn.add(Commentary(0, 1, "Goal!"))
        rows = np.nonzero(drawn.draw(frame, 1.5).any(axis=(1, 2)))[0]
        assert (rows.max() > 60) if position == "bottom" else (rows.min() < 30)
    with pytest.raises(ValueError, match="position must be one of bottom, top"):
        OverlayStyle(position="left")


def test_cli_records_a_file_at_its_frame_rate_with_a_sidecar(tiny_dir, tmp_path):
    out = tmp_path / "match.mp4"
    result = run_cli(
        "run", "--source", str(CLIP), "--model", str(tiny_dir), "--device", "cpu", "--record", str(out)
    )
    assert result.returncode == 0, result.stderr[-2000:]
    frames, duration = decoded(out)
    with av.open(str(CLIP)) as source:
        rate = float(source.streams.video[0].guessed_rate)
        expected = sum(1 for _ in source.decode(video=0))
    assert len(frames) == expected and duration == pytest.approx(expected / rate, abs=0.2)
    cues = list(srt.parse(out.with_suffix(".srt").read_text()))
    assert cues and all(0 <= c.start.total_seconds() < c.end.total_seconds() <= duration + 1e-6 for c in cues)


def test_bad_recording_paths_are_refused_clearly(tmp_path):
    with pytest.raises(StreamVLMError, match="the folder .* does not exist"):
        Recorder(tmp_path / "missing" / "a.mp4", fps=10)
    with pytest.raises(StreamVLMError, match="give a path ending in .mp4"):
        Recorder(tmp_path / "a.avi", fps=10)


def test_a_killed_recording_plays_up_to_near_the_kill(tiny_dir, tmp_path):
    """SIGKILL mid-recording (no cleanup at all): the fragmented MP4 still opens and decodes."""
    out = tmp_path / "crash.mp4"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "core",
            "run",
            "--source",
            str(CLIP),
            "--model",
            str(tiny_dir),
            "--device",
            "cpu",
            "--realtime",
            "--record",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "run.log").open("w"),  # a file: an unread pipe could block the logging
        env=env,
        cwd=ROOT,
    )
    try:
        # Wait for the first commentary line: loading is done and the stream is running. (It is the first
        # chunk's, or a later one's where a loaded machine made the first late and the paced run dropped it.)
        first = process.stdout.readline()
        cue = re.match(rb"\[\d\d:\d\d:\d\d\.\d - (\d\d):(\d\d):(\d\d\.\d)\]", first)
        assert cue, (tmp_path / "run.log").read_text()[-2000:]
        started = time.monotonic()
        time.sleep(3.0)
        process.send_signal(signal.SIGKILL)
        # the line comes when the stream has reached its cue's end
        cue_end = int(cue[1]) * 3600 + int(cue[2]) * 60 + float(cue[3])
        killed_after = time.monotonic() - started + cue_end
    finally:
        process.kill()
        process.wait(timeout=10)
    frames, _ = decoded(out)
    assert len(frames) >= (killed_after - 1.5) * 10  # all but about the last second (one fragment)
    assert len(frames) < 80  # it really was cut
    cues = list(srt.parse(out.with_suffix(".srt").read_text()))
    assert cues  # every cue written before the kill is there


def test_sound_is_muxed_on_the_pictures_clock(tmp_path):
    rate = 48_000
    t = np.arange(rate * 4) / rate
    # A chirp (200 -> 2,000 Hz): unlike a steady tone it matches itself at one lag only.
    tone = (0.3 * np.sin(2 * np.pi * (200 * t + 1800 * t**2 / 8))).astype(np.float32)[:, None]
    background = np.full((90, 160, 3), 100, np.uint8)
    path = tmp_path / "sound.mp4"
    with Recorder(path, fps=10, audio_rate=rate) as recorder:
        recorder.write_audio(tone[:4800], -0.1)  # before the first picture: no place yet, dropped
        for k in range(40):
            recorder.write(Frame(background, k / 10))
            if k != 20:  # one block lost (a dropout): filled with silence, later sound stays in place
                recorder.write_audio(tone[k * 4800 : (k + 1) * 4800], k / 10)
        recorder.write_audio(tone[:2400], 3.85)  # overlaps what was written: only the new half counts
    with av.open(str(path)) as container:
        audio = container.streams.audio[0]
        decoded_audio = [f for f in container.decode(audio)]
    samples = np.concatenate([f.to_ndarray()[0] for f in decoded_audio])
    assert audio.codec_context.name == "aac" and decoded_audio[0].pts == 0
    assert len(samples) == pytest.approx(4 * rate, abs=2048)  # 4 s (+ the encoder's padding)
    # The sound is where it belongs: around 2.5 s it matches the tone generated for 2.5 s, shifted at
    # most by the AAC encoder's priming delay (1,024 samples, 21 ms: within lip-sync tolerance).
    at = int(2.5 * rate)

    def match(lag: int) -> float:
        return np.corrcoef(samples[at + lag : at + lag + 4800], tone[at : at + 4800, 0])[0, 1]

    lag = max(range(0, 2049), key=match)
    print(f"audio lag {lag} samples, match {match(lag):.3f}")
    assert lag <= 1024 + 64 and match(lag) > 0.9
    gap = slice(int(2.02 * rate) + lag, int(2.08 * rate) + lag)
    assert np.abs(samples[gap]).max() < 0.05  # the dropout is silent


def top_level_boxes(path: Path) -> list[str]:
    """The MP4's top-level box types, in file order."""
    data, boxes, at = path.read_bytes(), [], 0
    while at + 8 <= len(data):
        size, kind = int.from_bytes(data[at : at + 4], "big"), data[at + 4 : at + 8].decode("latin-1")
        if size == 1:  # a 64-bit size follows the type
            size = int.from_bytes(data[at + 8 : at + 16], "big")
        boxes.append(kind)
        at += size if size else len(data) - at  # 0: the box runs to the end of the file
    return boxes


def test_an_endless_recording_keeps_no_index_per_fragment(tmp_path):
    """The muxer writes a fragment a second; by default FFmpeg also keeps one index entry per fragment
    in memory, for a random-access box (mfra) at the end: it grew with the stream without bound. The
    recording closes without that box (so without that memory) and still plays to its last frame."""
    path = tmp_path / "long.mp4"
    picture = np.full((48, 64, 3), 90, np.uint8)
    with Recorder(path, fps=10, audio_rate=16_000) as recorder:
        for k in range(45):
            recorder.write(Frame(picture, k / 10))
            recorder.write_audio(np.zeros((1600, 1), np.float32), k / 10)
    boxes = top_level_boxes(path)
    assert boxes[:2] == ["ftyp", "moov"] and "mfra" not in boxes
    assert boxes.count("moof") >= 5 and boxes[-1] == "mdat"  # one fragment a second, the last one whole
    frames, duration = decoded(path)
    assert len(frames) == 45 and duration == pytest.approx(4.5, abs=0.15)
