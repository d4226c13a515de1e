"""The desktop app driven as a person would: real widgets offscreen (pytest-qt), the tiny model."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import av  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import srt  # noqa: E402

pytest.importorskip("PySide6")

from PySide6.QtCore import QSettings, Qt  # noqa: E402

from app.window import MainWindow  # noqa: E402
from clihelpers import CLIP  # noqa: E402
from conftest import TEST_HOME  # noqa: E402
from livehelpers import app_env, user_files  # noqa: E402


@pytest.fixture
def settings(tmp_path):
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def window(qtbot, settings):
    win = MainWindow(settings=settings)
    qtbot.addWidget(win)
    win.show()
    yield win
    win.close()


def start(qtbot, win, source: str, model: str) -> None:
    win.source_box.setCurrentText(source)
    win.model_edit.setText(model)
    qtbot.mouseClick(win.start_button, Qt.MouseButton.LeftButton)


def log_lines(win) -> list[str]:
    return [line for line in win.log.toPlainText().splitlines() if line.strip()]


def test_a_file_streams_commentary_into_the_log_and_over_the_video_and_records(
    qtbot, window, tiny_dir, tmp_path
):
    window.record_check.setChecked(True)
    window.output_edit.setText(str(tmp_path))
    start(qtbot, window, str(CLIP), str(tiny_dir))
    qtbot.waitUntil(lambda: len(log_lines(window)) >= 3, timeout=60_000)
    assert all(line.startswith("[00:0") for line in log_lines(window))
    frame = window.frame
    assert frame is not None and window.view.picture is not None
    assert window.overlay.lines_at(frame.t), "the newest commentary is on the overlay"
    drawn = window.overlay.draw(frame.rgb, frame.t)
    assert (drawn != frame.rgb).any()
    assert "Recording to" in window.record_note.text() and str(tmp_path) in window.record_note.text()
    # Rates show once a second has passed since the first chunk (a loaded machine may deliver
    # the first lines in one burst, before that).
    qtbot.waitUntil(lambda: "chunks/s" in window.rate_label.text(), timeout=30_000)
    assert "latency" in window.latency_label.text()
    assert window.rate_label.isEnabled() and window.state_label.text().endswith(", recording")
    qtbot.mouseClick(window.stop_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.start_button.isEnabled(), timeout=10_000)
    # a user stop is "stopped" (not the end of the file, not a failure); the last figures stay, greyed
    assert window.state_label.text() == "Stopped" and window.message.text() == ""
    assert "chunks/s" in window.rate_label.text() and not window.rate_label.isEnabled()

    (recording,) = tmp_path.glob("streamvlm-*.mp4")
    with av.open(str(recording)) as container:
        frames = sum(1 for _ in container.decode(video=0))
        duration = container.duration / av.time_base
    assert frames >= 20 and duration == pytest.approx(frames / 10, abs=0.2)  # the clip's 10 FPS, kept
    cues = list(srt.parse(recording.with_suffix(".srt").read_text()))
    assert cues and all(c.end.total_seconds() <= duration + 1.0 for c in cues)


def test_a_file_played_to_its_end_ends_and_its_last_frame_holds_with_the_last_line(
    qtbot, window, tiny_dir, tmp_path
):
    """A 160x90 file to its end: the phases in order, "Ended" (not stopped, not failed), figures greyed,
    and the held last frame shows the newest line, which came after that frame."""
    from app.run_state import Phase
    from app.widgets import scaled_rgb
    from core.synthetic import write_clip

    clip = write_clip(tmp_path / "short.mp4", seconds=3.0, width=160, height=90)
    phases = []
    show = window._show_state
    window._show_state = lambda: (phases.append(window.run.phase), show())
    start(qtbot, window, str(clip), str(tiny_dir))
    qtbot.waitUntil(lambda: window.run.phase is Phase.ENDED, timeout=60_000)
    seen = [p for k, p in enumerate(phases) if k == 0 or p is not phases[k - 1]]
    assert [p for p in seen if p is not Phase.LOADING_MODEL] == [  # the model may be loaded already
        Phase.STARTING,
        Phase.PREPARING,
        Phase.STREAMING,
        Phase.ENDED,
    ]
    assert window.state_label.text().startswith("Ended") and window.message.text() == ""
    assert window.start_button.isEnabled() and not window.rate_label.isEnabled()
    lines = [line for line in window.lines if line.text.strip()]
    assert lines, "the tiny model said something in three seconds"
    t = window.paint_time()
    assert window.overlay.lines_at(t)[0][0] == lines[-1].text.strip()
    if lines[-1].end > window.frame.t:  # the usual case: the last chunk's line came after the last frame
        assert t == lines[-1].end and lines[-1].text.strip() not in dict(
            window.overlay.lines_at(window.frame.t)
        )
    shown = window.view.picture
    plain = scaled_rgb(window.frame.rgb, (shown.shape[1], shown.shape[0]))
    assert (shown[-shown.shape[0] // 4 :] != plain[-shown.shape[0] // 4 :]).any()  # drawn on the held frame


def test_a_live_sources_drop_shows_reconnecting_and_then_streaming_again(qtbot, window, tiny_dir):
    from app.run_state import Phase

    start(qtbot, window, str(CLIP), str(tiny_dir))
    qtbot.waitUntil(lambda: window.run.phase is Phase.STREAMING, timeout=60_000)
    streaming = window.state_label.text()
    window.worker.link.emit(False, "the stream stalled; reconnecting in 0.5 s")
    assert window.state_label.text() == "Reconnecting: the stream stalled; reconnecting in 0.5 s"
    window.worker.link.emit(True, "connected")
    assert window.state_label.text() == streaming
    window.stop()
    qtbot.waitUntil(lambda: window.thread is None, timeout=10_000)
    assert window.state_label.text() == "Stopped"


def test_closing_during_inference_returns_promptly_and_leaves_no_thread(qtbot, settings, tiny_dir):
    win = MainWindow(settings=settings)
    qtbot.addWidget(win)
    win.show()
    start(qtbot, win, str(CLIP), str(tiny_dir))
    qtbot.waitUntil(lambda: len(log_lines(win)) >= 1, timeout=60_000)
    thread = win.thread
    started = time.monotonic()
    win.close()
    assert time.monotonic() - started < 2.0
    assert thread.isFinished()
    assert not [t.name for t in threading.enumerate() if t.name in ("capture", "camera-reader")]


BAD_INPUTS = {
    "wrong URL": (lambda tmp, model: ("rtsp://127.0.0.1:9/nothing", model), "could not be opened"),
    "missing model": (lambda tmp, model: (str(CLIP), str(tmp / "no-model")), "does not exist"),
    "not a video": (lambda tmp, model: (str(_text(tmp)), model), "not a video"),
}


def _text(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a video\n" * 40)
    return path


def shown_errors(win) -> list[str]:
    """Every place an error is on screen now: the window's panel, and any message box."""
    from PySide6.QtWidgets import QApplication, QMessageBox

    boxes = [w.text() for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible()]
    return ([win.errors.summary.text()] if win.errors.isVisible() else []) + boxes


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_shows_one_specific_error_in_the_window_and_the_app_stays_usable(
    qtbot, window, tiny_dir, tmp_path, case
):
    from app.run_state import Phase

    make, words = case
    source, model = make(tmp_path, str(tiny_dir))
    start(qtbot, window, source, model)
    qtbot.waitUntil(lambda: window.run.phase is Phase.FAILED, timeout=30_000)
    qtbot.waitUntil(lambda: window.start_button.isEnabled(), timeout=10_000)
    (error,) = shown_errors(window)  # said once, inside the window, no dialog over the video
    assert words in error and error.count(". ") == 0  # one sentence
    assert window.state_label.text() == "Failed" and words not in window.state_label.text()
    window.errors.details_button.click()  # the details toggle shows the run's source and model
    assert window.errors.details.isVisible() and source in window.errors.details.toPlainText()
    window.errors.details_button.click()
    assert not window.errors.details.isVisible()
    # usable: the same window then streams a good source, and the error is gone
    start(qtbot, window, str(CLIP), str(tiny_dir))
    assert shown_errors(window) == []
    qtbot.waitUntil(lambda: len(log_lines(window)) >= 1, timeout=60_000)


def test_an_unwritable_output_folder_is_named_before_anything_starts(qtbot, window, tiny_dir, tmp_path):
    window.record_check.setChecked(True)
    window.output_edit.setText(str(tmp_path / "missing"))
    start(qtbot, window, str(CLIP), str(tiny_dir))
    assert "does not exist or is not writable" in window.message.text()
    assert window.thread is None and window.start_button.isEnabled()


def test_smoke_mode_shows_a_banner_runs_the_demo_clip_and_leaves_the_users_choices(qtbot, settings, tiny_dir):
    from app.state import DEMO_SOURCE, demo_clip

    settings.setValue("source", "screen:1")
    settings.setValue("model", "/models/mine")
    win = MainWindow(model="tiny", settings=settings, smoke=True)
    qtbot.addWidget(win)
    win.show()
    assert win.smoke_banner.isVisible() and "gibberish" in win.smoke_banner.text()
    assert win.source_box.currentText() == DEMO_SOURCE and win.model_edit.text() == "tiny"
    win.start()
    assert (
        win.request.source == str(demo_clip()) and demo_clip().is_file()
    )  # not a screen: no hall of mirrors
    qtbot.waitUntil(lambda: len(log_lines(win)) >= 1, timeout=60_000)
    win.close()
    again = MainWindow(settings=settings)
    qtbot.addWidget(again)
    again.show()
    assert again.source_box.currentText() == "screen:1" and again.model_edit.text() == "/models/mine"
    assert not again.smoke_banner.isVisible() and "smoke" not in again.windowTitle()


def test_a_first_start_offers_the_demo_clip_never_a_screen_and_saves_the_choices(qtbot, settings, tiny_dir):
    from app.state import DEMO_SOURCE

    win = MainWindow(settings=settings)
    qtbot.addWidget(win)
    items = [win.source_box.itemText(k) for k in range(win.source_box.count())]
    assert win.source_box.currentText() == DEMO_SOURCE and items[0] == DEMO_SOURCE
    start(qtbot, win, DEMO_SOURCE, str(tiny_dir))
    qtbot.waitUntil(lambda: len(log_lines(win)) >= 1, timeout=60_000)
    win.close()
    assert settings.value("source") == DEMO_SOURCE and settings.value("model") == str(tiny_dir)


def test_overlay_toggle_shortcut_shows_the_plain_picture(qtbot, window):
    from core.types import Commentary, Frame

    window.frame = Frame(np.full((90, 160, 3), 128, np.uint8), 2.0)
    window.on_commentary(Commentary(0.0, 1.0, "Into the box"))
    shown = window.view.picture.copy()
    window.overlay_action.trigger()  # View > Commentary overlay, Ctrl+O
    plain = window.view.picture
    assert (shown != plain).any() and window.overlay_visible is False
    assert not window.overlay_action.isChecked()


def test_export_writes_the_sessions_commentary_in_each_format(qtbot, window, tmp_path):
    import json

    import webvtt

    from core.types import Commentary

    for k, text in enumerate(["Kick-off", "Long ball forward", "Header, wide"]):
        window.on_commentary(Commentary(float(k), k + 1.0, text))
    assert window.export(tmp_path / "c.srt") == 3
    assert [c.content for c in srt.parse((tmp_path / "c.srt").read_text())][-1] == "Header, wide"
    window.export(tmp_path / "c.vtt")
    assert [c.text for c in webvtt.read(str(tmp_path / "c.vtt"))] == [
        "Kick-off",
        "Long ball forward",
        "Header, wide",
    ]
    window.export(tmp_path / "c.jsonl")
    assert json.loads((tmp_path / "c.jsonl").read_text().splitlines()[1])["start"] == 1.0
    with pytest.raises(ValueError, match=r"\.srt, \.vtt or \.jsonl"):
        window.export(tmp_path / "c.doc")


def test_overlay_position_and_size_apply_at_once_and_are_remembered(qtbot, window, settings):
    window.position_box.setCurrentText("top")
    window.font_spin.setValue(1.6)
    assert window.overlay.style.position == "top" and window.overlay.style.font_scale == 1.6
    again = MainWindow(settings=settings)
    qtbot.addWidget(again)
    assert again.position_box.currentText() == "top" and again.font_spin.value() == pytest.approx(1.6)


def test_a_window_given_no_settings_and_the_caches_use_the_test_runs_folder_not_the_users(qtbot):
    """What the app and `--model tiny` write by default (QSettings, the tiny model, the libraries'
    caches) lands in conftest's TEST_HOME, never in the user's own folders."""
    import huggingface_hub.constants
    import matplotlib

    from core.builders import tiny_model_dir

    win = MainWindow()  # the settings a user's app uses
    qtbot.addWidget(win)
    places = {
        "the app's settings": win.settings.fileName(),
        "Qt's default settings": QSettings("streamvlm", "streamvlm").fileName(),
        "--model tiny": str(tiny_model_dir()),
        "the Hugging Face cache": huggingface_hub.constants.HF_HOME,
        "matplotlib": matplotlib.get_configdir(),
    }
    for what, place in places.items():
        assert Path(place).resolve().is_relative_to(TEST_HOME.resolve()), f"{what} is at {place}"


def test_killing_the_app_while_it_records_leaves_a_playable_file(tiny_dir, tmp_path):
    import signal
    import subprocess
    import sys

    from core.synthetic import write_clip

    root = Path(__file__).resolve().parents[1]
    clip = write_clip(tmp_path / "long.mp4", seconds=20.0)  # 200 frames at 10 FPS, played in real time
    out = tmp_path / "out"
    out.mkdir()
    users = user_files()
    app = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app",
            "--model",
            str(tiny_dir),
            "--source",
            str(clip),
            "--start",
            "--record",
            str(out),
        ],
        env=app_env("offscreen"),
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "app.log").open("w"),  # a file, not a pipe nobody reads: logging must never block
    )
    try:
        deadline = time.monotonic() + 90
        while not list(out.glob("*.mp4")) and time.monotonic() < deadline:
            time.sleep(0.05)
        recordings = list(out.glob("*.mp4"))
        assert len(recordings) == 1, (tmp_path / "app.log").read_text()[-3000:]
        time.sleep(5.0)  # about five seconds of the stream are recorded
        app.send_signal(signal.SIGKILL)
    finally:
        app.kill()
        app.wait(timeout=10)
    with av.open(str(recordings[0])) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames >= 20, (tmp_path / "app.log").read_text()[-3000:]  # seconds of video survived the kill
    assert frames < 150  # and it really was cut: the clip has 200
    # The app saved its source, model and record folder in the run's settings, not the user's.
    saved = QSettings(str(TEST_HOME / "config" / "streamvlm" / "streamvlm.conf"), QSettings.Format.IniFormat)
    assert saved.value("source") == str(clip) and saved.value("output_folder") == str(out)
    assert user_files() == users


def test_a_remote_server_is_a_model_choice(qtbot, window, tiny_model):
    """The model field takes a server's URL and the token field its token; the stream runs there."""
    from conftest import SMALL_STREAM
    from core.engine import StreamingEngine
    from core.remote.server import InferenceServer, ServerThread

    server = InferenceServer(StreamingEngine(tiny_model, stream=SMALL_STREAM), token="t0ken")
    running = ServerThread(server)
    try:
        assert not window.token_edit.isEnabled()  # a local model has no token
        window.model_edit.setText(running.url)
        assert window.token_edit.isEnabled()
        window.token_edit.setText("wrong")
        start(qtbot, window, str(CLIP), running.url)
        qtbot.waitUntil(lambda: "missing or wrong token" in window.message.text(), timeout=30_000)
        qtbot.waitUntil(lambda: window.start_button.isEnabled(), timeout=10_000)

        window.token_edit.setText("t0ken")
        start(qtbot, window, str(CLIP), running.url)
        qtbot.waitUntil(lambda: len(log_lines(window)) >= 3, timeout=60_000)
        assert server.sessions == 1  # the commentary came from the server
        qtbot.mouseClick(window.stop_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: window.start_button.isEnabled(), timeout=10_000)
        qtbot.waitUntil(lambda: server.sessions == 0, timeout=10_000)  # Stop closed the remote session
        assert window.message.text() == "" and window.state_label.text() == "Stopped"  # not an error
    finally:
        running.stop()


def test_stop_and_start_keep_the_loaded_model_and_another_model_replaces_it(
    qtbot, window, tiny_dir, tmp_path
):
    """The same model and device: the second Start loads nothing (no 'Loading' state, the same model
    object). Another model: loaded in its place, the first one let go (a GPU may not hold two)."""
    import gc
    import shutil
    import weakref

    from app.run_state import Phase
    from app.worker import StreamWorker

    def run_once(model: str) -> tuple[object, list[Phase]]:
        phases = []
        show = window._show_state
        window._show_state = lambda: (phases.append(window.run.phase), show())
        start(qtbot, window, str(CLIP), model)
        qtbot.waitUntil(lambda: window.run.phase is Phase.STREAMING, timeout=60_000)
        engine = window.worker.engine
        window.stop()
        qtbot.waitUntil(lambda: window.thread is None, timeout=10_000)
        window._show_state = show
        return engine.model, phases

    first, _ = run_once(str(tiny_dir))
    again, phases = run_once(str(tiny_dir))
    assert again is first and Phase.LOADING_MODEL not in phases and Phase.PREPARING in phases
    gone = weakref.ref(first)
    del first, again
    other = tmp_path / "other-model"  # another folder: another model
    shutil.copytree(tiny_dir, other)
    replacement, phases = run_once(str(other))
    assert Phase.LOADING_MODEL in phases and list(StreamWorker._models.values()) == [replacement]
    gc.collect()
    assert gone() is None, "the first model is still in memory"
