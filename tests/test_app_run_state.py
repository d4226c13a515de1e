"""The app's run state machine, error reports, log and figures: plain unit tests, no Qt (and no display)."""

from __future__ import annotations

import re

import pytest

from app.run_state import (
    ErrorReport,
    Phase,
    RunLog,
    RunState,
    download_text,
    duration,
    first_sentence,
    percent,
    recording_name,
)
from app.state import DEMO_SOURCE, demo_clip, resolve_source
from core.download import DownloadProgress
from core.types import Commentary


def streaming(remote: bool = False) -> RunState:
    state = RunState()
    state.begin(remote=remote)
    assert state.progress(Phase.LOADING_MODEL, "tiny")
    assert state.progress(Phase.PREPARING, "cuda:0")
    assert state.progress(Phase.STREAMING, "(a file) on cuda:0")
    return state


def test_a_file_played_to_its_end_ends():
    state = streaming()
    assert state.label() == "Streaming (a file) on cuda:0" and state.live
    assert state.finish() is Phase.ENDED
    assert state.label().startswith("Ended") and not state.live and not state.running and state.error is None


def test_a_user_stop_is_stopped_not_ended_and_a_late_event_cannot_revive_the_run():
    state = streaming()
    assert state.stop() and state.phase is Phase.STOPPING and not state.stop()
    assert not state.progress(Phase.STREAMING, "late")  # queued before the stop, delivered after
    assert not state.link(False, "late drop")
    assert not state.fail(
        ErrorReport("the session was closed")
    )  # Stop closing a remote session is no failure
    assert state.finish() is Phase.STOPPED and state.label() == "Stopped" and state.error is None
    assert not state.progress(Phase.STREAMING, "later still") and state.phase is Phase.STOPPED


def test_an_error_report_is_one_sentence_with_the_rest_behind_details():
    error = ErrorReport.from_text("cannot open 'x.mp4': not a video")
    assert error == ErrorReport("Cannot open 'x.mp4': not a video.", "")  # no details repeating the summary
    error = ErrorReport.from_text("bad token. Ask the server's owner.\nThen retry.", "source: s")
    assert (
        error.summary == "Bad token."
        and error.details == "bad token. Ask the server's owner. Then retry.\n\nsource: s"
    )


def test_a_failure_keeps_its_reason_and_finishing_does_not_turn_it_into_an_end():
    state = RunState()
    state.begin()
    error = ErrorReport.from_text(
        "The model folder 'x' does not exist. Give a checkpoint folder.", "model: x"
    )
    assert state.fail(error)
    assert state.finish() is Phase.FAILED and state.error is error
    assert state.label() == "Failed"  # the reason is said once, in the error panel
    assert error.summary == "The model folder 'x' does not exist."
    assert "Give a checkpoint folder." in error.details and "model: x" in error.details


@pytest.mark.parametrize("remote", [False, True])
def test_reconnecting_and_back_to_where_it_was(remote):
    state = RunState()
    state.begin(remote=remote)
    if remote:
        assert state.progress(Phase.CONNECTING, "ws://h:8765")
        assert state.label() == "Connecting to ws://h:8765"
    assert state.progress(Phase.STREAMING, "(live) on ws://h:8765")
    assert state.link(False, "the stream stalled; retrying in 0.5 s")
    assert state.phase is Phase.RECONNECTING and state.live
    assert state.label() == "Reconnecting: the stream stalled; retrying in 0.5 s"
    assert state.link(False, "retrying in 1 s") and state.detail == "retrying in 1 s"
    assert state.link(True, "connected")
    assert state.phase is Phase.STREAMING and state.label() == "Streaming (live) on ws://h:8765"
    assert not state.link(True, "connected")  # already streaming: nothing changes


def test_a_drop_while_the_model_loads_returns_to_loading():
    state = RunState()
    state.begin()
    state.progress(Phase.LOADING_MODEL, "m")
    assert state.link(False, "camera lost") and state.phase is Phase.RECONNECTING
    assert state.link(True, "ok") and state.phase is Phase.LOADING_MODEL
    assert state.progress(Phase.PREPARING, "cpu") and state.label() == "Preparing the engine on cpu"


def test_progress_out_of_order_is_ignored_and_a_second_start_is_refused():
    state = RunState()
    assert not state.progress(Phase.STREAMING, "x") and state.phase is Phase.IDLE  # no run
    state.begin()
    assert state.progress(Phase.STREAMING, "(a file) on cpu")
    assert not state.progress(Phase.LOADING_MODEL, "again") and state.phase is Phase.STREAMING
    with pytest.raises(RuntimeError, match="already streaming"):
        state.begin()
    state.finish()
    state.begin()  # a new run after the last one is over
    assert state.phase is Phase.STARTING and state.error is None


def test_a_refused_start_shows_its_error_and_the_next_start_clears_it():
    state = RunState()
    state.refuse(ErrorReport.from_text("Choose a source."))
    assert state.phase is Phase.IDLE and state.error.summary == "Choose a source."
    state.begin()
    assert state.error is None


@pytest.mark.parametrize(
    "text, summary",
    [
        (
            "cannot open '/x/clip.v2.mp4': not a video. Check the file.",
            "cannot open '/x/clip.v2.mp4': not a video.",
        ),
        ("Version 2.5 is needed! Install it.", "Version 2.5 is needed!"),
        ("one sentence only", "one sentence only"),
        ("spaced\n  over\tlines. Next", "spaced over lines."),
    ],
)
def test_first_sentence(text, summary):
    assert first_sentence(" ".join(text.split())) == summary
    sentence = summary[0].upper() + summary[1:] + ("" if summary[-1] in ".!?" else ".")
    assert ErrorReport.from_text(text).summary == sentence  # a phrase from core shown as a sentence


def test_the_log_keeps_lines_and_the_figures_count_from_the_first_chunk():
    log = RunLog()
    assert log.add(Commentary(61.0, 62.5, "Corner")) == "[01:01.0 - 01:02.5] Corner"
    assert log.figures(live=True).rates == ""  # nothing measured yet
    log.chunk(latency=0.4, skipped=0, frames=20, now=100.0)  # model loading before this is not counted
    assert log.figures(live=True).rates == "measuring, 0 skipped"
    log.chunk(latency=0.5, skipped=1, frames=40, now=101.0)
    log.chunk(latency=0.25, skipped=1, frames=60, now=102.0)
    figures = log.figures(live=True)
    assert figures.rates == "in 20.0 FPS, 1.00 chunks/s, 1 skipped" and figures.latency == "latency 0.25 s"
    assert figures.live and not log.figures(live=False).live  # the window greys them
    assert log.chunks == 3 and [line.text for line in log.lines] == ["Corner"]
    log.clear()
    assert log.lines == [] and log.chunks == 0 and log.figures(live=True).rates == ""


def test_recording_names_are_timestamped_mp4s():
    assert re.fullmatch(r"streamvlm-\d{8}-\d{6}\.mp4", recording_name())


def test_the_demo_source_is_the_bundled_clip_and_other_specs_pass_through(tmp_path):
    assert resolve_source(DEMO_SOURCE) == resolve_source(" Demo Clip ") == str(demo_clip())
    assert demo_clip().is_file() and demo_clip().suffix == ".mp4"
    for spec in ("screen:0", "camera:1", "rtsp://h/x", str(tmp_path / "a.mp4")):
        assert resolve_source(spec) == spec


def test_an_installed_package_without_assets_draws_the_demo_clip(tmp_path, monkeypatch):
    import av

    import app.state

    monkeypatch.setattr(app.state, "_ASSET", tmp_path / "missing.mp4")
    monkeypatch.setattr("tempfile.gettempdir", lambda: str(tmp_path))
    clip = demo_clip()
    assert clip == tmp_path / "streamvlm-demo_clip.mp4"
    with av.open(str(clip)) as container:
        assert container.streams.video[0].width == 320 and sum(1 for _ in container.decode(video=0)) == 80
    assert demo_clip() == clip and list(tmp_path.iterdir()) == [clip]  # drawn once, no partial file left


# -- a hub model's download, and what the status says while the model loads ------------------------


def progress(done: int, total: int = 16_600_000_000, rate: float = 35e6) -> DownloadProgress:
    return DownloadProgress("org/name", done, total, rate)


def test_a_download_shows_its_percent_then_loading_weights_then_preparing():
    state = RunState()
    state.begin()
    assert state.progress(Phase.LOADING_MODEL, "org/name") and state.label() == "Loading weights: org/name"
    assert state.downloaded(progress(0, rate=0.0)) and state.label() == "Downloading weights 0%"
    assert state.downloaded(progress(7_138_000_000)) and state.label() == "Downloading weights 43%"
    assert state.download.done == 7_138_000_000 and state.running and not state.live
    assert state.downloaded(progress(16_599_999_999))
    assert state.label() == "Downloading weights 99%"  # not 100 before the last byte
    assert state.downloaded(progress(16_600_000_000)) and state.label() == "Downloading weights 100%"
    assert state.progress(Phase.LOADING_MODEL, "org/name") and state.label() == "Loading weights: org/name"
    assert not state.downloaded(progress(1))  # a late event cannot take the run back to downloading
    assert state.progress(Phase.PREPARING, "cuda:0")
    assert state.label() == "Preparing the GPU, commentary starts in eager mode"
    assert state.progress(Phase.STREAMING, "(a file) on cuda:0")
    assert state.finish() is Phase.ENDED


def test_preparing_on_a_cpu_says_nothing_of_eager_mode():
    state = RunState()
    state.begin()
    assert state.progress(Phase.PREPARING, "cpu") and state.label() == "Preparing the engine on cpu"


def test_stopping_a_download_is_a_cancelled_download_and_later_progress_is_ignored():
    state = RunState()
    state.begin()
    assert state.downloaded(progress(10_000_000))
    assert state.stop() and state.phase is Phase.STOPPING
    assert not state.downloaded(progress(20_000_000))  # the download thread's last block, after the Stop
    assert state.finish() is Phase.CANCELLED and not state.running and state.error is None
    assert state.label() == "Download cancelled: the bytes so far are kept, and Start resumes it"
    state.begin()  # the next Start: a new run, the last one's download forgotten
    assert state.phase is Phase.STARTING and state.download is None


def test_a_stop_after_the_download_is_a_plain_stop_and_a_download_failure_keeps_its_reason():
    state = RunState()
    state.begin()
    assert state.downloaded(progress(100, total=100))
    assert state.progress(Phase.LOADING_MODEL, "org/name")
    assert state.stop() and state.finish() is Phase.STOPPED  # the download was done: nothing cancelled
    state.begin()
    assert state.downloaded(progress(5))
    error = ErrorReport.from_text("model 'org/name' needs 16.6 GB more on disk but /c has 2.0 GB free")
    assert state.fail(error) and state.finish() is Phase.FAILED and state.error is error


@pytest.mark.parametrize(
    "event, text",
    [
        (progress(0, rate=0.0), "0 bytes of 16.6 GB"),  # nothing measured yet: no rate, no time left
        (progress(7_138_000_000), "7.1 GB of 16.6 GB, 35.0 MB/s, 5 min left"),
        (progress(16_599_000_000), "16.6 GB of 16.6 GB, 35.0 MB/s, 1 s left"),  # not '0 s' before the end
        (progress(1_000_000, rate=200_000.0), "1.0 MB of 16.6 GB, 200.0 kB/s, 23 h 03 min left"),
        (progress(25_400_000, 25_400_000), "25.4 MB of 25.4 MB, 35.0 MB/s"),  # done: no time left
    ],
)
def test_the_download_text_says_bytes_rate_and_time_left(event, text):
    assert download_text(event) == text


@pytest.mark.parametrize(
    "seconds, text",
    [(0.0, "1 s"), (0.4, "1 s"), (58.2, "59 s"), (59.4, "1 min"), (3569, "59 min"), (3600, "1 h 00 min")],
)
def test_time_left_is_as_precise_as_is_useful(seconds, text):
    assert duration(seconds) == text


def test_percent_is_whole_and_reaches_100_only_when_done():
    assert [percent(progress(d, 1000)) for d in (0, 9, 10, 999, 1000)] == [0, 0, 1, 99, 100]
    assert percent(progress(0, 0)) == 100  # nothing to fetch is done


# -- speech: the voice's download before the model's, the choices, the status bar's text --------------


def test_a_voices_download_then_the_models_each_show_their_progress_then_preparing():
    """With the neural voice and a hub model both missing: the voice's weights download and are read,
    then the model's download shows too (a late event of the voice's is still ignored)."""
    state = RunState()
    state.begin()
    assert state.progress(Phase.LOADING_MODEL, "the pocket voice")
    assert state.label() == "Loading weights: the pocket voice"
    voice = DownloadProgress("kyutai/pocket-tts-without-voice-cloning", 50, 100, 1e6)
    assert state.downloaded(voice) and state.label() == "Downloading weights 50%"
    assert state.progress(Phase.LOADING_MODEL, "the pocket voice")
    assert state.progress(Phase.LOADING_MODEL, "org/name") and state.label() == "Loading weights: org/name"
    assert not state.downloaded(voice)  # the voice's download is over
    assert state.downloaded(progress(1_000)) and state.download.repo_id == "org/name"
    assert state.progress(Phase.LOADING_MODEL, "org/name") and not state.downloaded(progress(2_000))
    assert state.progress(Phase.PREPARING, "cpu") and state.progress(Phase.STREAMING, "(a file) on cpu")


def stats(spoken=3, waiting=1, dropped=2, lag=1.23, max_lag=2.46):
    from core.speech.speaker import SpeechStats

    return SpeechStats(spoken, waiting, dropped, lag, max_lag)


def test_the_speech_field_says_the_lag_and_the_waiting_and_dropped_lines():
    from app.speech import speech_text

    assert speech_text(None) == ""  # no speech in this run: no field
    assert speech_text(stats(0, 0, 0, None, 0.0)) == "speech: nothing heard yet, 0 waiting, 0 dropped"
    assert speech_text(stats()) == "speech lag 1.2 s (max 2.5 s), 1 waiting, 2 dropped"
    log = RunLog()
    log.speech = stats()
    assert log.figures(live=True).speech == speech_text(stats())  # before the first chunk too
    log.chunk(latency=0.4, skipped=0, frames=20, now=100.0)
    assert log.figures(live=False).speech == speech_text(stats())  # the last figures of a run, kept
    log.clear()
    assert log.speech is None and log.figures(live=True).speech == ""


def test_the_output_list_starts_with_the_systems_default_and_a_saved_output_is_found_by_name():
    from app.speech import DEFAULT_DEVICE, device_choices, initial_device
    from core.speech.output import OutputDevice

    devices = [OutputDevice(3, "USB headset", 48000), OutputDevice(7, "HDMI", 44100)]
    choices = device_choices(devices, default=3)
    assert choices == [(DEFAULT_DEVICE, None), ("USB headset", 3), ("HDMI", 7)]
    assert device_choices(devices, default=None) == [("USB headset", 3), ("HDMI", 7)]  # no default to offer
    assert device_choices([], default=0) == []  # nothing opens: speech cannot be heard
    # PortAudio's indexes move when a device comes or goes: the name is what is remembered
    moved = device_choices([OutputDevice(0, "HDMI", 44100), OutputDevice(1, "USB headset", 48000)], 0)
    assert moved[initial_device("USB headset", moved)] == ("USB headset", 1)
    assert initial_device("a headset unplugged since", moved) == 0 and initial_device("", moved) == 0


def test_a_voice_is_offered_with_why_it_cannot_speak_and_start_says_what_to_do(monkeypatch):
    from app import speech

    monkeypatch.setattr("core.speech.espeak.espeak_program", lambda: None)
    monkeypatch.setattr("core.speech.pocket.installed", lambda: False)
    choices = {choice.name: choice for choice in speech.voice_choices()}
    assert set(choices) == {"pocket", "espeak"}
    assert choices["espeak"].label == "eSpeak NG (espeak)" and "GPL" in choices["espeak"].about
    assert "apt-get install espeak-ng" in choices["espeak"].problem
    assert "streamvlm[speech]" in choices["pocket"].problem
    assert speech.initial_voice("pocket", list(choices.values())) == "espeak"  # the fallback
    problem = speech.speech_problem("espeak", None, default=0)
    assert "espeak-ng" in problem and problem.endswith("or choose another voice")
    monkeypatch.setattr("core.speech.espeak.espeak_program", lambda: "/usr/bin/espeak-ng")
    choices = speech.voice_choices()
    assert speech.initial_voice("espeak", choices) == "espeak"
    assert speech.initial_voice("a voice removed since", choices) == "espeak"  # pocket not installed here
    assert speech.speech_problem("espeak", None, default=0) is None
    assert speech.speech_problem("espeak", 4, default=None) is None  # a chosen output needs no default
    assert "no default sound output" in speech.speech_problem("espeak", None, default=None)


def test_the_log_words_a_question_as_asked_and_its_answer_marked():
    log = RunLog()
    assert log.asked("  Who is\n winning? ", 75.3) == "[01:15.3] Q: Who is winning?"  # as asked: one line
    assert log.asked("Now?", None) == "[--:--.-] Q: Now?"  # asked before the first picture
    answer = Commentary(76.0, 77.0, "Red", question="Who is winning?")
    assert log.add(answer) == "[01:16.0 - 01:17.0] A: Red" and log.lines == [answer]


def test_the_streaming_status_says_when_the_engine_leaves_its_eager_phase():
    """While the model compiles in the background the status says the engine runs eagerly; the worker
    reports the switch as streaming again, with the plain detail."""
    from app.worker import WARMING

    state = RunState()
    state.begin()
    assert state.progress(Phase.PREPARING, "cuda:0")
    assert state.label() == "Preparing the GPU, commentary starts in eager mode"
    assert state.progress(Phase.STREAMING, "(live) on cuda:0" + WARMING)
    assert state.label() == "Streaming (live) on cuda:0, eager until the GPU code is compiled"
    assert state.progress(Phase.STREAMING, "(live) on cuda:0")
    assert state.label() == "Streaming (live) on cuda:0"
    state.stop()
    assert not state.progress(Phase.STREAMING, "(live) on cuda:0") and state.phase is Phase.STOPPING
