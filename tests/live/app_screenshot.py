"""Screenshots of the real app window on an X display (run by tests/test_app_screen.py under Xvfb).

    DISPLAY=:N QT_QPA_PLATFORM=xcb python tests/live/app_screenshot.py OUT_FOLDER [ANSWERING_CONFIG]

Opens the app in smoke mode (the tiny model on the demo clip) as `python -m app --smoke` does, and
grabs the screen through mss in five states: idle; streaming with commentary over the video;
speaking it with espeak on the sound server the test started (the status bar showing the speech
lag) and a question typed and answered (with ANSWERING_CONFIG, an engine config in which the random
model's every reply to a question is an answer); recording into the default folder (created at Start); an error shown. Each picture is checked
against what the window painted, and the numbers go to OUT_FOLDER/result.json for the test.
Then, with HF_ENDPOINT set (the test's hub server, stopping in the middle of the weights), a window
of its own picks hub model org/name and is grabbed downloading it, before its Cancel.
"""

import json
import os
import sys
import time
from pathlib import Path

import mss
import numpy as np
from PIL import Image
from PySide6.QtCore import QSettings
from PySide6.QtGui import QGuiApplication

from app.__main__ import application
from app.form import default_record_folder
from app.run_state import Phase
from app.widgets import scaled_rgb
from app.window import MainWindow
from core.config import resolve_config

DEADLINE = time.monotonic() + 150
QUESTION = "Who is winning?"


def main() -> None:
    out = Path(sys.argv[1])
    app = application()
    window = MainWindow(
        model="tiny", smoke=True, settings=QSettings(str(out / "settings.ini"), QSettings.Format.IniFormat)
    )
    window.move(0, 0)
    window.resize(1280, 760)
    window.show()

    def wait(done, seconds: float = 0.0) -> None:
        """Run the event loop until `done()` (and at least `seconds`)."""
        end = time.monotonic() + seconds
        while (not done() or time.monotonic() < end) and time.monotonic() < DEADLINE:
            app.processEvents()
            time.sleep(0.02)
        if not done():
            raise SystemExit(f"timed out in phase {window.run.phase}")

    def overlay_text() -> int:
        """Characters of commentary on the shown picture (the random model's line may be a few
        characters only, too little for the band check below, so the script waits for a real line)."""
        t = window.paint_time()
        return 0 if t is None else sum(len(text.strip()) for text, _ in window.overlay.lines_at(t))

    def grab(name: str) -> np.ndarray:
        app.processEvents()
        window.repaint()  # the picture the view holds now is the one on screen
        QGuiApplication.sync()  # and it reached the X server before the grab
        frame = window.frameGeometry()
        with mss.MSS() as screen:
            shot = np.asarray(
                screen.grab(
                    {"left": frame.x(), "top": frame.y(), "width": frame.width(), "height": frame.height()}
                )
            )[:, :, 2::-1]
        Image.fromarray(shot).save(out / name)
        return shot

    result = {"title": window.windowTitle()}
    wait(lambda: window.isVisible(), 1.0)
    grab("app_idle.png")
    result["idle_state"] = window.state_label.text()

    window.start()
    wait(lambda: window.run.phase is Phase.STREAMING and len(window.lines) >= 2 and overlay_text() >= 12)
    shot = grab("app_streaming.png")
    result["streaming_state"] = window.state_label.text()
    result["figures_live"] = window.rate_label.isEnabled() and bool(window.rate_label.text())
    # Where the picture is: compare the grabbed pixels with what the view painted, and with the plain
    # source frame (scaled the same way): the picture above the subtitles is the frame, the band is not.
    left, top, width, height = window.view.picture_rect()
    origin = window.view.mapTo(window, window.view.rect().topLeft())
    shown = shot[origin.y() + top : origin.y() + top + height, origin.x() + left : origin.x() + left + width]
    painted, plain = (
        window.view.picture.astype(int),
        scaled_rgb(window.frame.rgb, (width, height)).astype(int),
    )
    shown = shown.astype(int)
    result["picture"] = [left, top, width, height]
    result["painted_diff"] = float(np.abs(shown - painted).mean())
    result["upper_diff"] = float(np.abs(shown[: height // 3] - plain[: height // 3]).mean())
    result["subtitle_band_diff"] = float(np.abs(shown[-height // 4 :] - plain[-height // 4 :]).mean())
    window.stop()
    wait(lambda: window.thread is None)
    result["stopped_state"] = window.state_label.text()
    result["stopped_figures_live"] = window.rate_label.isEnabled()

    # Speaking and answering: espeak on the system's default output (the test's null sink), a question
    # typed and asked with Enter, until its answer is in the log and over the video, a line has been
    # heard and the status bar says its lag.
    if len(sys.argv) > 2:
        window.config = resolve_config(sys.argv[2])
    window.speak_check.setChecked(True)
    window.voice_box.setCurrentIndex(window.voice_box.findData("espeak"))
    result["speech_outputs"] = [
        window.speech_device_box.itemText(i) for i in range(window.speech_device_box.count())
    ]
    window.start()
    wait(lambda: window.run.phase is Phase.STREAMING and window.runlog.chunks >= 2)
    window.question_edit.setText(QUESTION)
    window.question_edit.returnPressed.emit()  # Enter in the box

    def answer_shown() -> bool:
        t = window.paint_time()
        return t is not None and any(text.startswith("A: ") for text, _ in window.overlay.lines_at(t))

    wait(
        lambda: (
            window.speech_label.text().startswith("speech lag")
            and window.runlog.chunks >= 4  # the rates measured, as a run some seconds on shows them
            and answer_shown()
        )
    )
    grab("app_speech.png")
    result["speech_state"] = window.state_label.text()
    result["speech_text"] = window.speech_label.text()
    result["question_log"] = [line for line in window.log.toPlainText().splitlines() if "Q: " in line]
    result["answers"] = [[line.question, line.marked] for line in window.lines if line.is_answer]
    result["answer_log"] = [line for line in window.log.toPlainText().splitlines() if "] A: " in line]
    window.stop()
    wait(lambda: window.thread is None)
    window.speak_check.setChecked(False)

    folder = default_record_folder()
    result["record_folder_before"] = folder.exists()
    window.record_check.setChecked(True)
    result["record_note_before"] = window.record_note.text()
    window.start()
    wait(lambda: window.run.phase is Phase.STREAMING and len(window.lines) >= 1 and overlay_text() >= 12)
    grab("app_recording.png")
    result["record_note"] = window.record_note.text()
    window.stop()
    wait(lambda: window.thread is None)
    result["recordings"] = sorted(p.name for p in folder.glob("*"))

    window.record_check.setChecked(False)
    window.source_box.setCurrentText("rtsp://127.0.0.1:9/live")
    window.start()
    wait(lambda: window.run.phase is Phase.FAILED and window.thread is None, 0.3)
    grab("app_error.png")
    result["error_state"] = window.state_label.text()
    result["error"] = window.errors.summary.text() if window.errors.isVisible() else ""
    window.close()

    if os.environ.get("HF_ENDPOINT"):
        # A first start of a hub model: a window as a user's (no smoke banner), downloading it. (The
        # helpers above see this window: they read `window` when called.)
        window = MainWindow(
            model="org/name", settings=QSettings(str(out / "hub.ini"), QSettings.Format.IniFormat)
        )
        window.move(0, 0)
        window.resize(1280, 760)
        window.show()
        window.start()
        wait(lambda: window.run.phase is Phase.DOWNLOADING and window.run.download.done >= 10 * 2**20, 0.5)
        grab("app_download.png")
        panel = window.download_panel
        result["download_state"] = window.state_label.text()
        result["download_hint"] = window.view.hint
        result["download_panel"] = [
            panel.isVisible(),
            panel.title.text(),
            panel.figures.text(),
            panel.bar.value(),
        ]
        panel.cancel_button.click()
        wait(lambda: window.thread is None)
        result["cancelled_state"] = window.state_label.text()
        window.close()
    (out / "result.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
