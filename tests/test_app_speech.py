"""The app's speech controls driven as a person would (pytest-qt, real widgets offscreen): Speak with
espeak-ng on the demo clip, heard on a PulseAudio null sink the test starts (no sound card needed)
and recorded back from its monitor; the status bar's lag and counters; the voices and outputs
offered; an output that does not open; the choices remembered.

`.ci/run` installs espeak-ng, pulseaudio and pulseaudio-utils; where one is missing outside CI
these tests are skipped with the install command (in CI they fail, livehelpers.need).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import av  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("PySide6")

from PySide6.QtCore import QSettings, Qt  # noqa: E402

from app.run_state import Phase  # noqa: E402
from app.window import MainWindow  # noqa: E402
from livehelpers import SoundServer, need  # noqa: E402

LAG = re.compile(r"speech lag (\d+\.\d) s \(max (\d+\.\d) s\), ([01]) waiting, (\d+) dropped")


@pytest.fixture
def settings(tmp_path):
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def sound(tmp_path, monkeypatch):
    """A PulseAudio server with one null sink, 'virt', as this process's sound (PortAudio reaches it
    through ALSA's pulse plugin; the window reads the device list again when it opens)."""
    need(shutil.which("espeak-ng") is not None, "espeak-ng: apt-get install espeak-ng")
    server = SoundServer(tmp_path).start()
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    yield server
    server.stop()


def open_window(qtbot, settings) -> MainWindow:
    win = MainWindow(settings=settings)
    qtbot.addWidget(win)
    win.show()
    return win


def items(box) -> list[str]:
    return [box.itemText(row) for row in range(box.count())]


def choose_speech(win, voice: str = "espeak", device: str = "pulse", volume: int = 60) -> None:
    win.speak_check.setChecked(True)
    win.voice_box.setCurrentIndex(win.voice_box.findData(voice))
    win.speech_device_box.setCurrentIndex(items(win.speech_device_box).index(device))
    win.volume_slider.setValue(volume)


def test_speak_on_the_demo_clip_is_heard_shows_the_lag_and_counters_and_is_in_the_recording(
    qtbot, settings, sound, tiny_dir, tmp_path
):
    win = open_window(qtbot, settings)
    assert items(win.voice_box) == ["Kyutai Pocket TTS (pocket)", "eSpeak NG (espeak)"]
    assert items(win.speech_device_box)[0] == "System default" and "pulse" in items(win.speech_device_box)
    assert not win.speech_note.isVisible() and not win.speech_label.isVisible()  # no speech yet
    assert not win.voice_box.isEnabled()  # until Speak is on
    choose_speech(win)
    assert win.voice_box.isEnabled() and win.volume_label.text() == "60%"
    win.record_check.setChecked(True)
    win.output_edit.setText(str(tmp_path))
    heard = tmp_path / "heard.raw"
    with open(heard, "wb") as out:
        monitor = subprocess.Popen(
            ["parec", "-d", "virt.monitor", "--format=float32le", "--rate=22050", "--channels=1"], stdout=out
        )
        try:
            win.source_box.setCurrentText("demo clip")
            win.model_edit.setText(str(tiny_dir))
            qtbot.mouseClick(win.start_button, Qt.MouseButton.LeftButton)
            qtbot.waitUntil(lambda: win.run.phase is Phase.STREAMING, timeout=60_000)
            # Fixed for the run: Speak, the voice and the output; the volume changes what is heard now.
            assert not win.speak_check.isEnabled() and not win.voice_box.isEnabled()
            assert win.volume_slider.isEnabled()
            qtbot.waitUntil(lambda: LAG.fullmatch(win.speech_label.text()) is not None, timeout=60_000)
            first = LAG.fullmatch(win.speech_label.text())
            assert 0.0 <= float(first[1]) <= float(first[2])
            assert win.speech_label.isVisible() and win.speech_label.isEnabled()
            assert "Dropped" in win.speech_label.toolTip()
            win.volume_slider.setValue(35)
            assert win.worker._sound.volume == pytest.approx(0.35)
            # The counters follow the speaker: three more chunks, each reporting its stats.
            chunks = win.runlog.chunks
            qtbot.waitUntil(lambda: win.runlog.chunks >= chunks + 3, timeout=60_000)
            stats = win.runlog.speech
            assert stats.spoken >= 1 and win.speech_label.text() == (
                f"speech lag {stats.lag:.1f} s (max {stats.max_lag:.1f} s), "
                f"{stats.waiting} waiting, {stats.dropped} dropped"
            )
            qtbot.mouseClick(win.stop_button, Qt.MouseButton.LeftButton)
            qtbot.waitUntil(lambda: win.thread is None, timeout=20_000)
        finally:
            monitor.send_signal(signal.SIGINT)  # parec writes out what it holds
            monitor.wait(timeout=10)
    # The last figures stay, greyed; the rows are free again.
    assert LAG.fullmatch(win.speech_label.text()) and not win.speech_label.isEnabled()
    assert win.speak_check.isEnabled() and win.voice_box.isEnabled()
    samples = np.fromfile(heard, np.float32)
    assert np.sqrt((samples**2).mean()) > 0.005, "nothing was heard on the null sink"
    (recording,) = tmp_path.glob("streamvlm-*.mp4")
    with av.open(str(recording)) as container:
        assert container.streams.audio, "the recording has no sound track"
        sound_track = np.concatenate([f.to_ndarray().ravel() for f in container.decode(audio=0)])
    assert np.abs(sound_track).max() > 0.05, "the recording's sound track is silent"
    win.close()


def test_an_output_that_no_longer_opens_fails_the_run_with_one_error_naming_it(
    qtbot, settings, sound, tiny_dir
):
    win = open_window(qtbot, settings)
    choose_speech(win, device="pulse")
    sound.stop()  # the output was listed, and is gone by Start (a headset unplugged)
    win.source_box.setCurrentText("demo clip")
    win.model_edit.setText(str(tiny_dir))
    win.start()
    qtbot.waitUntil(lambda: win.thread is None, timeout=60_000)
    assert win.run.phase is Phase.FAILED and win.state_label.text() == "Failed"
    assert win.message.text() == (
        "The sound output 'pulse' could not be opened; choose another output for speech, or turn Speak off."
    )
    assert (
        "PortAudio" in win.errors.details.toPlainText() or "OutputStream" in win.errors.details.toPlainText()
    )
    assert win.runlog.chunks == 0 and win.start_button.isEnabled()  # failed before streaming; usable
    win.speak_check.setChecked(False)
    win.start()  # without speech the same run goes
    qtbot.waitUntil(lambda: len(win.lines) >= 1, timeout=60_000)
    assert win.message.text() == "" and not win.speech_label.isVisible()
    win.stop()
    qtbot.waitUntil(lambda: win.thread is None, timeout=20_000)
    win.close()


def test_a_voice_that_cannot_speak_is_greyed_and_start_says_what_to_install(
    qtbot, settings, sound, monkeypatch
):
    monkeypatch.setattr("core.speech.espeak.espeak_program", lambda: None)
    win = open_window(qtbot, settings)
    row = win.voice_box.findData("espeak")
    assert win.voice_box.itemText(row) == "eSpeak NG (espeak) (not installed)"
    assert not win.voice_box.model().item(row).isEnabled()
    assert "apt-get install espeak-ng" in win.voice_box.itemData(row, Qt.ItemDataRole.ToolTipRole)
    choose_speech(win, voice="espeak")
    win.start()
    assert (
        win.thread is None
        and "espeak-ng" in win.message.text()
        and "choose another voice" in win.message.text()
    )
    win.close()


def test_without_a_sound_output_speak_is_off_and_a_note_says_why(qtbot, settings, tmp_path, monkeypatch):
    monkeypatch.setenv("PULSE_SERVER", f"unix:{tmp_path / 'no-server'}")  # no sound server to reach
    win = open_window(qtbot, settings)
    if win.speech_device_box.count():
        pytest.skip("this machine has a sound output of its own")
    assert not win.speak_check.isEnabled() and not win.speak_check.isChecked()
    assert win.speech_note.isVisible() and win.speech_note.text().startswith("Speech is off: ")
    win.close()


def test_the_speech_choices_are_remembered_and_the_output_found_by_name(qtbot, settings, sound):
    win = open_window(qtbot, settings)
    choose_speech(win, voice="espeak", device="pulse", volume=35)
    win.close()
    again = open_window(qtbot, settings)
    assert again.speak_check.isChecked() and again.voice_box.currentData() == "espeak"
    assert again.speech_device_box.currentText() == "pulse" and again.volume_slider.value() == 35
    assert again.volume_label.text() == "35%"
    again.close()
    smoke = MainWindow(settings=settings, smoke=True)  # a smoke check starts from the defaults...
    qtbot.addWidget(smoke)
    assert not smoke.speak_check.isChecked() and smoke.volume_slider.value() == 80
    smoke.speak_check.setChecked(True)
    smoke.close()
    assert settings.value("speech/volume", type=int) == 35  # ...and leaves the user's choices alone
    assert settings.value("speech/device") == "pulse"
