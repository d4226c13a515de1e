"""What people expect of a desktop app, driven offscreen (pytest-qt): the record folder flow, labelled
rows, drag and drop, the Help menu and About box, full screen, remembered geometry, high-DPI
pictures, the app's name and icon, and errors shown once inside the window."""

from __future__ import annotations

import os
import re
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("PySide6")

from PySide6.QtCore import QMimeData, QPointF, QSettings, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QDragEnterEvent, QDropEvent  # noqa: E402
from PySide6.QtWidgets import QApplication, QFormLayout, QLabel, QMessageBox  # noqa: E402

from app.window import MainWindow  # noqa: E402
from clihelpers import CLIP  # noqa: E402
from core.types import Commentary, Frame  # noqa: E402


@pytest.fixture
def settings(tmp_path):
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def movies(tmp_path, monkeypatch):
    """The platform's Movies folder, as Qt's standard paths read it (XDG user dirs), in tmp_path; missing."""
    config = tmp_path / "xdg"
    config.mkdir()
    folder = tmp_path / "My Films"
    (config / "user-dirs.dirs").write_text(f'XDG_VIDEOS_DIR="{folder}"\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config))
    return folder


@pytest.fixture
def window(qtbot, settings):
    win = MainWindow(settings=settings)
    qtbot.addWidget(win)
    win.show()
    yield win
    win.close()


def test_the_default_record_folder_is_the_platforms_movies_folder_created_at_start(
    qtbot, settings, movies, tiny_dir
):
    win = MainWindow(settings=settings)
    qtbot.addWidget(win)
    win.show()
    assert win.record_folder() == movies and not movies.exists()
    assert not win.record_note.isVisible()  # nothing about recording while it is off
    win.record_check.setChecked(True)
    note = win.record_note.text()
    assert re.search(r"streamvlm-\d{8}-\d{6}\.mp4 and its \.srt", note) and "created at Start" in note
    win.model_edit.setText(str(tiny_dir))
    win.start()
    assert movies.is_dir() and win.message.text() == ""
    assert win.record_note.text() == f"Recording to {win.request.record_to}"
    assert Path(win.request.record_to).parent == movies
    qtbot.waitUntil(lambda: len(win.lines) >= 1, timeout=60_000)
    win.stop()
    qtbot.waitUntil(lambda: win.thread is None, timeout=10_000)
    assert [p.suffix for p in sorted(movies.iterdir())] == [".mp4", ".srt"]
    win.close()


def test_a_folder_is_picked_with_the_folder_dialog_and_a_missing_one_is_refused(
    qtbot, window, tmp_path, monkeypatch
):
    picked = tmp_path / "picked"
    picked.mkdir()
    asked = []
    monkeypatch.setattr(
        "app.window.QFileDialog.getExistingDirectory", lambda *args: asked.append(args) or str(picked)
    )
    window.folder_button.click()
    assert asked and window.record_folder() == picked and window.record_check.isChecked()
    assert window.record_note.text().endswith("and its .srt here.")
    window.output_edit.setText(str(tmp_path / "typo"))  # not the default folder: never created
    assert "does not exist" in window.record_note.text()
    window.model_edit.setText("tiny")
    window.start()
    assert "does not exist or is not writable" in window.message.text() and window.thread is None
    assert not (tmp_path / "typo").exists()


def test_every_row_has_a_label_and_the_sound_note_shows_only_with_recording(qtbot, settings, monkeypatch):
    monkeypatch.setattr(
        "core.media.audio.input_devices", lambda rescan: ([], "no audio input device was found")
    )
    win = MainWindow(settings=settings)
    qtbot.addWidget(win)
    win.show()
    form = win.findChild(QFormLayout)
    labels = {
        form.itemAt(row, QFormLayout.ItemRole.LabelRole).widget().text()
        for row in range(form.rowCount())
        if form.itemAt(row, QFormLayout.ItemRole.LabelRole) is not None
    }
    assert {
        "Source",
        "Model",
        "Token",
        "Record",
        "Sound",
        "Speech",
        "Speech output",
        "Overlay",
        "Run",
    } <= labels
    assert not win.audio_note.isVisible() and not win.audio_check.isEnabled()
    win.record_check.setChecked(True)
    assert win.audio_note.isVisible() and "no audio input device" in win.audio_note.text()
    assert not win.audio_check.isEnabled()  # no device: the option stays off, the note says why
    win.record_check.setChecked(False)
    assert not win.audio_note.isVisible()
    win.close()


def drop(win, urls: list[QUrl]) -> bool:
    """Drag `urls` onto the window and drop them; whether the window accepted the drag."""
    mime = QMimeData()
    mime.setUrls(urls)
    enter = QDragEnterEvent(
        QPointF(50, 50),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    QApplication.sendEvent(win, enter)
    if not enter.isAccepted():
        return False
    event = QDropEvent(
        QPointF(50, 50),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    QApplication.sendEvent(win, event)
    return True


def test_a_video_file_dropped_on_the_window_becomes_the_source(qtbot, window, tmp_path):
    before = window.source_box.currentText()
    assert not drop(window, [QUrl("https://example.com/match.mp4")])  # not a local file
    assert not drop(window, [QUrl.fromLocalFile(str(tmp_path))])  # a folder
    assert not drop(window, [QUrl.fromLocalFile(str(CLIP)), QUrl.fromLocalFile(str(CLIP))])  # two files
    assert window.source_box.currentText() == before
    assert drop(window, [QUrl.fromLocalFile(str(CLIP))])
    assert window.source_box.currentText() == str(CLIP)


def test_help_lists_every_shortcut_and_about_gives_the_versions(qtbot, window):
    from importlib.metadata import version

    from PySide6.QtCore import qVersion

    menus = [action.text().replace("&", "") for action in window.menuBar().actions()]
    assert menus == ["File", "Run", "View", "Help"]
    keys = dict(window.shortcuts())
    for key in ("Ctrl+Return", "Ctrl+R", "Ctrl+O", "F11", "F1", "Esc"):
        assert key in keys, keys
    window.show_shortcuts()
    assert (
        window.dialog.isVisible() and "Ctrl+Return" in window.dialog.text() and "F11" in window.dialog.text()
    )
    assert not window.dialog.isModal() or window.dialog.windowModality() != Qt.WindowModality.ApplicationModal
    window.show_about()
    text = window.dialog.text()
    assert f"streamvlm {version('streamvlm')}" in text and f"Qt {qVersion()}" in text
    assert f"PyTorch {version('torch')}" in text and f"PyAV {version('av')}" in text


def test_the_picture_goes_full_screen_and_esc_brings_it_back(qtbot, window):
    window.on_frame(Frame(np.full((90, 160, 3), 90, np.uint8), 1.0))
    index = window.splitter.indexOf(window.view)
    window.view.toggle_full_screen()  # View > Full-screen picture, F11, or a double-click
    assert window.view.isWindow() and window.view.is_full_screen
    assert window.splitter.indexOf(window.view) == -1
    qtbot.keyClick(window.view, Qt.Key.Key_Escape)
    assert not window.view.isWindow() and window.splitter.indexOf(window.view) == index
    qtbot.mouseDClick(window.view, Qt.MouseButton.LeftButton)
    assert window.view.is_full_screen
    qtbot.keyClick(window.view, Qt.Key.Key_F11)
    assert not window.view.is_full_screen


def test_window_size_and_splitter_positions_are_remembered(qtbot, settings):
    win = MainWindow(settings=settings)
    qtbot.addWidget(win)
    win.show()
    win.resize(780, 560)  # within the offscreen screen (800 wide): a restored window is kept on screen
    win.splitter.setSizes([340, 440])
    assert (win.width(), win.height()) == (780, 560)
    sizes = win.splitter.sizes()
    win.close()
    again = MainWindow(settings=settings)
    qtbot.addWidget(again)
    again.show()
    assert (again.width(), again.height()) == (780, 560)
    assert again.splitter.sizes() == sizes
    again.close()


def test_the_picture_is_made_at_the_screens_device_pixels(qtbot, window):
    """On a 2x screen the view gets a picture with twice the pixels (the overlay drawn at that size)."""
    window.view.resize(640, 360)
    window.view.devicePixelRatioF = lambda: 2.0
    window.on_frame(Frame(np.full((90, 160, 3), 90, np.uint8), 1.0))
    assert window.view.picture.shape[:2] == (720, 1280)
    assert window.view._image.devicePixelRatio() == 2.0
    assert window.view.picture_rect() == (0, 0, 640, 360)


def test_the_app_is_named_streamvlm_and_has_an_icon(qtbot, window):
    from app.__main__ import application
    from app.icon import SIZES

    app = application()
    assert app.applicationName() == "streamvlm" and app.desktopFileName() == "streamvlm"
    assert not app.windowIcon().isNull() and not window.windowIcon().isNull()
    assert [s.width() for s in window.windowIcon().availableSizes()] == list(SIZES)
    assert window.windowTitle() == "streamvlm"


def test_an_export_error_shows_in_the_same_panel_and_a_success_in_the_status_bar(
    qtbot, window, tmp_path, monkeypatch
):
    window.on_commentary(Commentary(0.0, 1.0, "Kick-off"))
    (tmp_path / "taken.srt").mkdir()
    monkeypatch.setattr(
        "app.window.QFileDialog.getSaveFileName", lambda *a: (str(tmp_path / "taken.srt"), "")
    )
    window._export_dialog()
    boxes = [w for w in QApplication.topLevelWidgets() if isinstance(w, QMessageBox) and w.isVisible()]
    assert window.errors.isVisible() and "is a folder" in window.message.text() and not boxes
    window.errors.close_button.click()
    assert not window.errors.isVisible()
    monkeypatch.setattr("app.window.QFileDialog.getSaveFileName", lambda *a: (str(tmp_path / "c.vtt"), ""))
    window._export_dialog()
    assert "exported 1 lines" in window.statusBar().currentMessage() and not window.errors.isVisible()


def test_the_state_is_shown_in_one_place(qtbot, window):
    """Only the status bar's first field says what the run is doing (no second copy elsewhere)."""
    text = window.state_label.text()
    assert text.startswith("Idle")
    same = [w for w in window.findChildren(QLabel) if w is not window.state_label and w.text() == text]
    assert same == []


# -- what a probe of the window as a careless user found ------------------------------------------------


def test_recordings_started_in_the_same_second_get_names_of_their_own(tmp_path, monkeypatch):
    from app.run_state import recording_name

    monkeypatch.setattr("app.run_state.time.strftime", lambda fmt: "streamvlm-20261130-090000")
    first = recording_name(tmp_path)
    (tmp_path / first).write_bytes(b"a recording")
    second = recording_name(tmp_path)
    (tmp_path / second).with_suffix(".srt").write_text("its subtitles only")
    third = recording_name(tmp_path)
    assert (first, second, third) == (
        "streamvlm-20261130-090000.mp4",
        "streamvlm-20261130-090000-2.mp4",
        "streamvlm-20261130-090000-3.mp4",
    )


@pytest.mark.parametrize("typed", ["", "   ", "relative/folder", "~no-such-user-here/films"])
def test_a_record_folder_that_names_no_full_path_is_refused_and_nothing_is_written(
    qtbot, window, tmp_path, monkeypatch, typed
):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # where a relative or empty folder used to put the recording
    window.record_check.setChecked(True)
    window.output_edit.setText(typed)  # typing '~name' of no user raised in this slot on every key
    assert window.record_note.isVisible() and window.record_note.text()
    window.model_edit.setText("tiny")
    window.start()
    assert window.thread is None and window.message.text().lower().startswith("cannot record")
    assert list(cwd.iterdir()) == []


def test_an_export_onto_a_full_disk_is_an_error_not_a_success(qtbot, window, tmp_path, monkeypatch):
    window.on_commentary(Commentary(0.0, 1.0, "Kick-off"))
    full = tmp_path / "full.srt"
    full.symlink_to("/dev/full")
    monkeypatch.setattr("app.window.QFileDialog.getSaveFileName", lambda *a: (str(full), ""))
    window._export_dialog()
    assert "export failed" in window.message.text().lower() and "No space left" in window.message.text()
    assert "exported" not in window.statusBar().currentMessage()


def test_bad_values_in_the_settings_file_fall_back_to_defaults(qtbot, settings):
    settings.setValue("overlay/font_scale", "big")
    settings.setValue("speech/volume", "loud")
    win = MainWindow(settings=settings)  # raised ValueError: the app could not start at all
    qtbot.addWidget(win)
    assert win.overlay.style.font_scale == 1.0
    from app import speech

    assert win.volume_slider.value() == speech.DEFAULT_VOLUME  # not 0, a muted voice


def test_closing_the_full_screen_picture_puts_it_back_and_the_keys_work_there(qtbot, window):
    index = window.splitter.indexOf(window.view)
    window.view.enter_full_screen()
    assert window.overlay_action in window.view.actions() and window.run_action in window.view.actions()
    window.view.close()  # Alt+F4 on the full-screen picture
    assert not window.view.is_full_screen and window.splitter.indexOf(window.view) == index
    assert window.view.isVisible()
