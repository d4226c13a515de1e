"""Speech (core/speech): the pacing rule, the WAV on the stream clock, the recording's audio track, the
speech flags of `python -m core run`, and the neural voice through its real library classes.

The tests that need sound (espeak-ng speaking real lines, a PulseAudio null sink) are in
test_speech_audio.py.
"""

from __future__ import annotations

import threading
import time
import wave

import av
import numpy as np
import pytest

from clihelpers import CLIP, assert_one_error_line, run_main
from core.__main__ import main as core_main
from core.media.recorder import Recorder
from core.speech.clock import StreamClock
from core.speech.speaker import Speaker
from core.speech.wav import SpeechWav
from core.types import Commentary, Frame

RATE = 16_000


class ToneVoice:
    """A voice whose every line is `seconds` of a tone; it signals each line it starts."""

    name, licence, sample_rate = "tone", "none", RATE

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.said: list[str] = []
        self.started = threading.Event()

    def synthesize(self, text: str) -> np.ndarray:
        self.said.append(text)
        self.started.set()
        t = np.arange(int(self.seconds * RATE)) / RATE
        return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def started_clock() -> StreamClock:
    clock = StreamClock()
    clock.see(0.0)
    return clock


def line(k: int, text: str | None = None) -> Commentary:
    return Commentary(float(k), k + 1.0, text if text is not None else f"line {k}")


# -- the pacing rule ---------------------------------------------------------------------------------


def test_while_a_line_is_spoken_one_newer_waits_and_a_still_newer_replaces_it():
    voice = ToneVoice(seconds=0.6)
    heard: list[tuple[int, float]] = []
    speaker = Speaker(voice, [lambda s, rate, t: heard.append((len(s), t))], started_clock())
    speaker.say(line(0))
    assert voice.started.wait(5)  # line 0 is being spoken now
    speaker.say(line(1))
    speaker.say(line(2, "   "))  # a silent second: not spoken, not counted, replaces nothing
    speaker.say(line(3))
    speaker.say(line(4))
    stats = speaker.stats()
    assert (stats.spoken, stats.waiting, stats.dropped) == (1, 1, 2)
    speaker.close()  # the run ended: the waiting line is still spoken, to its end
    assert voice.said == ["line 0", "line 4"]  # newest wins
    stats = speaker.stats()
    assert (stats.spoken, stats.waiting, stats.dropped) == (2, 0, 2)
    assert "2 lines spoken, 2 dropped" in stats.summary()
    # The second line starts when the first has sounded for its whole length, not before.
    assert heard[1][1] - heard[0][1] >= 0.6 - 0.02
    assert stats.lag == pytest.approx(heard[1][1] - 4.0)  # from the start of line 4's second


def test_a_line_that_comes_while_idle_is_spoken_at_once_and_a_stop_cuts_the_rest():
    voice = ToneVoice(seconds=5.0)
    heard: list[float] = []
    clock = started_clock()
    speaker = Speaker(voice, [lambda s, rate, t: heard.append(t)], clock)
    said_at = clock.now()
    speaker.say(line(0))
    assert voice.started.wait(5)
    speaker.say(line(1))
    began = time.monotonic()
    speaker.close(finish=False)  # the user stopped: no 5 s wait, the waiting line is not spoken
    assert time.monotonic() - began < 2.0
    assert voice.said == ["line 0"] and heard[0] - said_at < 0.5


def test_a_voice_that_fails_stops_the_run_at_the_next_line():
    class Broken(ToneVoice):
        def synthesize(self, text: str) -> np.ndarray:
            raise RuntimeError("the voice broke")

    speaker = Speaker(Broken(1.0), [], started_clock())
    speaker.say(line(0))
    deadline = time.monotonic() + 5
    while speaker.error is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(RuntimeError, match="the voice broke"):
        speaker.say(line(1))


# -- the WAV and the recording ------------------------------------------------------------------------


def test_the_wav_places_each_line_on_the_stream_clock_with_silence_between(tmp_path):
    tone = 0.5 * np.ones(RATE // 4, np.float32)
    wav = SpeechWav(tmp_path / "speech.wav", RATE)
    wav(tone, RATE, 0.5)
    wav(tone, RATE // 2, 2.0)  # another rate is resampled to the file's
    wav(tone, RATE, 2.9)  # starts 0.1 s before the line before ends (jitter): the overlap is cut
    wav.close()
    with wave.open(str(tmp_path / "speech.wav")) as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1
        samples = np.frombuffer(w.readframes(w.getnframes()), "<i2") / 32768
    loud = np.flatnonzero(np.abs(samples) > 0.25) / RATE
    assert loud[0] == pytest.approx(0.5, abs=0.002)
    assert len(samples) / RATE == pytest.approx(3.0 + 0.25 - 0.1, abs=0.01)
    assert np.abs(samples[int(0.8 * RATE) : int(1.9 * RATE)]).max() == 0  # silence between
    assert np.abs(samples[int(2.05 * RATE) : int(2.45 * RATE)]).min() > 0.25  # 0.5 s at half the rate


def decoded_audio(path) -> tuple[np.ndarray, int]:
    with av.open(str(path)) as container:
        rate = container.streams.audio[0].rate
        samples = np.concatenate([f.to_ndarray()[0] for f in container.decode(audio=0)])
    return samples, rate


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.4) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def strength(samples: np.ndarray, rate: int, freq: float) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples)))) / len(samples)
    return float(spectrum[round(freq * len(samples) / rate)])


def test_a_recording_with_speech_alone_has_it_as_its_audio_track_where_it_was_spoken(tmp_path):
    recorder = Recorder(tmp_path / "spoken.mp4", fps=10, speech=True)
    for k in range(30):
        recorder.write(Frame(np.full((64, 96, 3), 80, np.uint8), k / 10))
        if k == 10:
            recorder.add_speech(tone(440, 0.8, 22_050), 22_050, 1.0)  # the voice's rate, not the track's
    recorder.close()
    samples, rate = decoded_audio(tmp_path / "spoken.mp4")
    envelope = np.array(
        [np.abs(samples[i : i + rate // 20]).max() for i in range(0, len(samples), rate // 20)]
    )
    loud = np.flatnonzero(envelope > 0.2) / 20
    assert loud[0] == pytest.approx(1.0, abs=0.06) and loud[-1] == pytest.approx(1.75, abs=0.06)
    assert envelope[:18].max() < 0.02  # silence before, from the stream's start


def test_speech_is_mixed_into_the_captured_sound(tmp_path):
    rate = 48_000
    recorder = Recorder(tmp_path / "mixed.mp4", fps=10, audio_rate=rate, speech=True)
    recorder.write(Frame(np.full((64, 96, 3), 80, np.uint8), 0.0))
    recorder.add_speech(tone(880, 0.5, 24_000), 24_000, 1.0)  # handed over whole as it starts
    block = rate // 50
    room = tone(220, 2.0, rate, amplitude=0.2)
    for i in range(0, len(room), block):  # captured sound, in blocks, as a device delivers it
        recorder.write_audio(room[i : i + block, None], i / rate)
        if i % (rate // 10) == 0:
            recorder.write(Frame(np.full((64, 96, 3), 80, np.uint8), i / rate))
    recorder.close()
    samples, got_rate = decoded_audio(tmp_path / "mixed.mp4")
    assert got_rate == rate
    during, before = samples[int(1.1 * rate) : int(1.4 * rate)], samples[int(0.5 * rate) : int(0.8 * rate)]
    # A tone of amplitude A shows as A/4 through the Hann window: 0.1 for the speech, 0.05 the room.
    assert strength(during, rate, 880) > 0.07 and strength(during, rate, 220) > 0.035  # both, mixed
    assert strength(before, rate, 880) < 0.005 and strength(before, rate, 220) > 0.035


# -- the command line ---------------------------------------------------------------------------------


def run_args(tmp_path, *extra: str) -> list[str]:
    return ["run", "--source", str(CLIP), "--model", "tiny", *extra]


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--speak", "--voice", "klingon"], ["no voice 'klingon'", "pocket, espeak"]),
        (["--voice", "espeak"], ["--voice", "add --speak"]),
        (["--speech-device", "0"], ["--speech-device", "add --speak"]),
        (["--speech-wav", "{tmp}/speech.wav", "--speech-device", "0"], ["--speech-device", "add --speak"]),
        (["--speech-wav", "{tmp}/speech.mp3"], ["--speech-wav", ".wav"]),
        (["--speech-wav", "{tmp}/no/such/folder/speech.wav"], ["--speech-wav", "does not exist"]),
        (["--speech-wav", "{tmp}/out.wav", "--srt", "{tmp}/out.wav"], ["--speech-wav", "same file"]),
        (["--speech-wav", "{clip}"], ["--speech-wav", "destroy the input"]),
    ],
)
def test_bad_speech_flags_are_one_line(capsys, tmp_path, extra, words):
    before = CLIP.stat().st_mtime_ns
    argv = run_args(tmp_path, *[a.format(tmp=tmp_path, clip=CLIP) for a in extra])
    assert_one_error_line(*run_main(core_main, argv, capsys), *words)
    assert CLIP.stat().st_mtime_ns == before  # the input is never written


def test_a_missing_espeak_says_what_to_install(capsys, tmp_path, monkeypatch):
    import core.speech.espeak

    monkeypatch.setattr(core.speech.espeak, "PROGRAM", "espeak-ng-not-installed")
    argv = run_args(tmp_path, "--speech-wav", str(tmp_path / "s.wav"), "--voice", "espeak")
    assert_one_error_line(*run_main(core_main, argv, capsys), "espeak-ng", "apt-get install espeak-ng")
    assert not (tmp_path / "s.wav").exists()


def test_a_speech_device_that_is_no_output_lists_the_outputs(capsys, tmp_path):
    pytest.importorskip("sounddevice")
    argv = run_args(tmp_path, "--speak", "--voice", "espeak", "--speech-device", "99999")
    status, lines = run_main(core_main, argv, capsys)
    assert_one_error_line(status, lines, "--speak")  # no outputs at all, or not one of them
    assert "the outputs are:" in lines[0] or "--speech-wav PATH alone" in lines[0]


# -- the neural voice: Pocket TTS's own classes, random weights from a config ---------------------------

pocket_tts = pytest.importorskip("pocket_tts")

CHARS = " abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-"


def tiny_pocket_config(folder, tokenizer: str, weights: str | None = None):
    """The package's English config made tiny (one layer, narrow), naming `tokenizer` and `weights`."""
    import yaml
    from tokenizers import Tokenizer, models

    from core.speech.pocket import _pocket_tts

    config_dir = _pocket_tts().utils.config.CONFIGS_DIR
    settings = yaml.safe_load((config_dir / "english.yaml").read_text())
    settings.pop("weights_path")
    settings.pop("weights_path_without_voice_cloning")
    if weights:
        settings["weights_path_without_voice_cloning"] = weights
    vocab = {"<unk>": 0, **{c: i + 1 for i, c in enumerate(CHARS)}}
    flow = settings["flow_lm"]
    flow["lookup_table"].update(tokenizer_path=tokenizer, n_bins=len(vocab), dim=32)
    flow["flow"] = {"depth": 1, "dim": 32}
    flow["transformer"] = dict(d_model=32, hidden_scale=2, max_period=10000, num_heads=2, num_layers=1)
    mimi = settings["mimi"]
    mimi["seanet"].update(dimension=32, n_filters=4)
    mimi["transformer"].update(
        d_model=32, num_heads=2, num_layers=1, dim_feedforward=64, input_dimension=32, output_dimensions=[32]
    )
    mimi.update(quantizer={"dimension": 8, "output_dimension": 32}, inner_dim=8, outer_dim=32)
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(settings))
    Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>")).save(str(folder / "tokenizer.json"))
    return path


def test_the_pocket_voice_speaks_through_its_library_with_random_weights(tmp_path):
    import torch

    from core.speech.pocket import PocketVoice
    from core.speech.voice import Voice

    threads = torch.get_num_threads()
    config = tiny_pocket_config(tmp_path, str(tmp_path / "tokenizer.json"))
    voice = PocketVoice.from_config(config, tone(200, 1.0, 16_000), 16_000)
    assert torch.get_num_threads() == threads  # the package's import does not slow the model
    assert isinstance(voice, Voice) and voice.sample_rate == 24_000
    samples = voice.synthesize("What a goal!")
    assert samples.dtype == np.float32 and samples.ndim == 1 and len(samples) > 0
    assert np.isfinite(samples).all()
    assert len(voice.synthesize("  ")) == 0


def test_the_pocket_voice_downloads_its_files_once_with_progress_then_loads_cached(tmp_path, monkeypatch):
    """The package's config names hub files; only those (and the chosen speaker's state) are fetched
    through core.download.fetch, and a second load needs no hub."""
    import safetensors.torch
    from huggingface_hub import constants

    from core.speech.pocket import REPO, PocketVoice
    from hubhelpers import COMMIT, FakeHub

    # The test hub serves one commit, so the pins name it (the package pins commits of the real hub).
    monkeypatch.setattr(
        pocket_tts.utils.utils,
        "get_predefined_voice",
        lambda language, name: f"hf://{REPO}/languages/{language}/embeddings/{name}.safetensors@{COMMIT}",
    )

    build = tmp_path / "build"
    build.mkdir()
    model = pocket_tts.TTSModel.load_model(config=tiny_pocket_config(build, str(build / "tokenizer.json")))
    safetensors.torch.save_file(model.state_dict(), str(build / "model.safetensors"))
    state = model.get_state_for_audio_prompt(torch_tone())
    pocket_tts.export_model_state(state, build / "alba.safetensors")
    files = {
        "languages/tiny/model.safetensors": (build / "model.safetensors").read_bytes(),
        "languages/tiny/tokenizer.json": (build / "tokenizer.json").read_bytes(),
        "languages/tiny/embeddings/alba.safetensors": (build / "alba.safetensors").read_bytes(),
        "languages/tiny/embeddings/marius.safetensors": b"\0" * 1000,  # another speaker: not fetched
        "languages/german/model.safetensors": b"\0" * 5000,  # another language: not fetched
    }
    pins = tmp_path / "pins"
    pins.mkdir()
    config = tiny_pocket_config(
        pins,
        f"hf://{REPO}/languages/tiny/tokenizer.json@{COMMIT}",
        weights=f"hf://{REPO}/languages/tiny/model.safetensors@{COMMIT}",
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    cache = tmp_path / "hub"
    events = []
    with FakeHub(REPO, files) as hub:
        voice = PocketVoice.load(config=config, progress=events.append, endpoint=hub.url, cache_dir=cache)
        assert set(hub.served) == {
            "languages/tiny/model.safetensors",
            "languages/tiny/tokenizer.json",
            "languages/tiny/embeddings/alba.safetensors",
        }
    assert events and events[-1].done == events[-1].total > 0
    assert len(voice.synthesize("Goal!")) > 0
    # Cached: the hub is gone and the next start loads without it.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    again = PocketVoice.load(config=config, cache_dir=cache)
    assert len(again.synthesize("Goal!")) > 0


def test_the_pocket_voice_offline_without_its_files_is_one_sentence_naming_espeak(tmp_path):
    from core.errors import StreamVLMError
    from core.speech.pocket import REPO, PocketVoice

    config = tiny_pocket_config(
        tmp_path,
        f"hf://{REPO}/languages/tiny/tokenizer.json",
        weights=f"hf://{REPO}/languages/tiny/model.safetensors",
    )
    with pytest.raises(StreamVLMError, match="use --voice espeak") as caught:
        PocketVoice.load(config=config, cache_dir=tmp_path / "hub")  # conftest: HF_HUB_OFFLINE
    assert "\n" not in str(caught.value) and "--model" not in str(caught.value)


def torch_tone():
    import torch

    return torch.from_numpy(tone(200, 1.0, 24_000))[None]
