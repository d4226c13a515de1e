"""Screenshot of the real app window on an X display (run by tests/test_app_screen.py under Xvfb).

    DISPLAY=:N QT_QPA_PLATFORM=xcb python tests/live/app_screenshot.py MODEL SOURCE OUT.png OUT.json

Opens the main window, streams SOURCE with MODEL until two commentary lines are shown, stops
(the last picture and its overlay stay on screen), grabs the screen through mss, and compares
the part showing the video with the source frame it shows: the picture above the subtitles must
match, the subtitle band must not. Writes the screenshot and the numbers.
"""

import json
import sys
import time

import mss
import numpy as np
from PIL import Image
from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QApplication

from app.window import MainWindow


def main() -> None:
    model, source, png, out = sys.argv[1:5]
    app = QApplication([])
    window = MainWindow(
        model=model, source=source, settings=QSettings(out + ".ini", QSettings.Format.IniFormat)
    )
    window.move(0, 0)
    window.show()
    window.start()
    deadline = time.monotonic() + 90

    def overlay_text() -> int:
        """Characters of commentary over the shown picture: the random model's line may be a few
        characters only, too little for the band check below, so the script waits for a real line."""
        frame = getattr(window, "frame", None)
        return sum(len(text.strip()) for text, _ in window.overlay.lines_at(frame.t)) if frame else 0

    while (
        len(window.log.toPlainText().splitlines()) < 2 or overlay_text() < 12
    ) and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.02)
    window.stop()
    while window.thread is not None and time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)

    with mss.MSS() as screen:
        shot = np.asarray(screen.grab(screen.monitors[1]))[:, :, 2::-1]
    Image.fromarray(shot).save(png)

    # Where the picture is on screen: the pixmap, centred in the view.
    pixmap = window.view.pixmap()
    origin = window.view.mapToGlobal(window.view.rect().topLeft())
    left = origin.x() + (window.view.width() - pixmap.width()) // 2
    top = origin.y() + (window.view.height() - pixmap.height()) // 2
    shown = shot[top : top + pixmap.height(), left : left + pixmap.width()].astype(int)
    frame = window.frame
    source_frame = np.asarray(
        Image.fromarray(frame.rgb).resize((pixmap.width(), pixmap.height()), Image.Resampling.BILINEAR)
    ).astype(int)
    height = pixmap.height()
    upper = np.abs(shown[: height // 3] - source_frame[: height // 3]).mean()
    lower = np.abs(shown[-height // 4 :] - source_frame[-height // 4 :]).mean()
    result = {
        "log_lines": len(window.log.toPlainText().splitlines()),
        "overlay_lines": len(window.overlay.lines_at(frame.t)),
        "title": window.windowTitle(),
        "picture": [left, top, pixmap.width(), pixmap.height()],
        "upper_diff": float(upper),
        "subtitle_band_diff": float(lower),
    }
    with open(out, "w") as f:
        json.dump(result, f)
    window.close()


if __name__ == "__main__":
    main()
