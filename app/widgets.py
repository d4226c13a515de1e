"""The window's own widgets: the video view (device pixels, full screen), the error panel and the
download panel.

The view shows a picture the window prepared at exactly the view's size in device pixels (the
overlay is drawn at that resolution, not scaled up with the frame), so text is sharp on any screen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.run_state import ErrorReport, download_text, percent
from core.download import DownloadProgress


class VideoView(QWidget):
    """The live picture. `resized` asks the window for a picture at the new size; double-click, F11
    toggle full screen and Esc leaves it."""

    resized = Signal()
    full_screen_changed = Signal(bool)

    def __init__(self, hint: str) -> None:
        super().__init__()
        self.hint = hint
        self.picture: np.ndarray | None = None  # RGB, device pixels; kept alive while `_image` uses it
        self._image: QImage | None = None
        self._home: tuple[QSplitter, int, bytes] | None = None  # where the view goes back after full screen
        self.setMinimumSize(320, 180)
        self.setAutoFillBackground(False)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)

    # -- the picture --------------------------------------------------------------------------------

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """The size, in device pixels, a `width` x `height` frame is shown at: as large as fits, aspect kept."""
        ratio = self.devicePixelRatioF()
        room_w, room_h = max(1, round(self.width() * ratio)), max(1, round(self.height() * ratio))
        scale = min(room_w / width, room_h / height)
        return max(1, round(width * scale)), max(1, round(height * scale))

    def set_picture(self, rgb: np.ndarray | None) -> None:
        if rgb is None:
            self.picture = self._image = None
        else:
            self.picture = np.ascontiguousarray(rgb)
            h, w = self.picture.shape[:2]
            self._image = QImage(
                self.picture.data, w, h, self.picture.strides[0], QImage.Format.Format_RGB888
            )
            self._image.setDevicePixelRatio(self.devicePixelRatioF())
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor("black"))
        if self._image is None:
            painter.setPen(QColor("#a0a0a0"))
            painter.drawText(
                self.rect().adjusted(20, 20, -20, -20),
                Qt.TextFlag.TextWordWrap | Qt.AlignmentFlag.AlignCenter,
                self.hint,
            )
            return
        # Placed on whole device pixels: a half-pixel offset would resample (blur) the whole picture.
        ratio = self._image.devicePixelRatio()
        w, h = self._image.width() / ratio, self._image.height() / ratio
        x, y = (round((self.width() - w) / 2 * ratio) / ratio, round((self.height() - h) / 2 * ratio) / ratio)
        painter.drawImage(QRectF(x, y, w, h), self._image)

    def picture_rect(self) -> tuple[int, int, int, int]:
        """Where the picture is in the view (logical pixels): left, top, width, height."""
        if self._image is None:
            return 0, 0, 0, 0
        ratio = self._image.devicePixelRatio()
        w, h = self._image.width() / ratio, self._image.height() / ratio
        x, y = round((self.width() - w) / 2 * ratio) / ratio, round((self.height() - h) / 2 * ratio) / ratio
        return round(x), round(y), round(w), round(h)

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        self.resized.emit()

    # -- full screen --------------------------------------------------------------------------------

    @property
    def is_full_screen(self) -> bool:
        return self._home is not None

    def toggle_full_screen(self) -> None:
        self.leave_full_screen() if self.is_full_screen else self.enter_full_screen()

    def enter_full_screen(self) -> None:
        splitter = self.parentWidget()
        if self.is_full_screen or not isinstance(splitter, QSplitter):
            return
        self._home = (splitter, splitter.indexOf(self), bytes(splitter.saveState()))
        self.setParent(None)  # a window of its own, on the whole screen
        self.setWindowTitle("streamvlm")
        self.showFullScreen()
        self.setFocus()
        self.full_screen_changed.emit(True)

    def leave_full_screen(self) -> None:
        if self._home is None:
            return
        splitter, index, state = self._home
        self._home = None
        self.showNormal()
        splitter.insertWidget(index, self)
        splitter.restoreState(state)
        self.show()
        self.full_screen_changed.emit(False)

    def closeEvent(self, event) -> None:  # noqa: N802
        if self.is_full_screen:  # Alt+F4 or the window manager's close: the picture goes back, not away
            event.ignore()
            self.leave_full_screen()
        else:
            super().closeEvent(event)

    def keyPressEvent(self, event) -> None:  # noqa: N802
        if event.key() == Qt.Key.Key_Escape and self.is_full_screen:
            self.leave_full_screen()
        elif event.key() == Qt.Key.Key_F11:
            self.toggle_full_screen()
        else:
            super().keyPressEvent(event)

    def mouseDoubleClickEvent(self, event) -> None:  # noqa: N802
        self.toggle_full_screen()


class ErrorPanel(QFrame):
    """The one place errors show: inside the window, never modal; a sentence, and details on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("errorPanel")
        self.setStyleSheet(
            "#errorPanel { background: #fdecea; border: 1px solid #e0a5a0; border-radius: 4px; }"
            "#errorPanel QLabel { color: #8a1c12; }"
        )
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details_button = QToolButton(text="Details", checkable=True)
        self.details_button.toggled.connect(self._toggle_details)
        self.close_button = QToolButton(text="Dismiss")
        self.close_button.clicked.connect(self.clear)
        self.details = QPlainTextEdit(readOnly=True)
        self.details.setMaximumHeight(120)
        self.details.hide()
        buttons = QHBoxLayout()  # below the sentence, which gets the panel's whole width
        buttons.addStretch(1)
        buttons.addWidget(self.details_button)
        buttons.addWidget(self.close_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.addWidget(self.summary)
        layout.addLayout(buttons)
        layout.addWidget(self.details)
        self.hide()

    def show_error(self, error: ErrorReport | None) -> None:
        if error is None:
            self.clear()
            return
        self.summary.setText(error.summary)
        self.details.setPlainText(error.details)
        self.details_button.setVisible(bool(error.details))
        self.details_button.setChecked(False)
        self.show()

    def clear(self) -> None:
        self.summary.setText("")
        self.details.clear()
        self.details_button.setChecked(False)
        self.hide()

    def _toggle_details(self, shown: bool) -> None:
        self.details.setVisible(shown)


class DownloadPanel(QFrame):
    """A model's download, inside the window and not modal: what, how far (a bar), bytes, rate and time
    left, and Cancel (the bytes so far stay on disk for the next Start)."""

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("downloadPanel")
        self.setStyleSheet(
            "#downloadPanel { background: #ebf4ff; border: 1px solid #a3bffa; border-radius: 4px; }"
            "#downloadPanel QLabel { color: #2c5282; }"
        )
        self.title = QLabel("")
        self.title.setStyleSheet("font-weight: bold;")
        self.title.setWordWrap(True)  # a long model id wraps rather than widening the side column
        self.bar = QProgressBar()
        self.bar.setRange(
            0, 100
        )  # in whole percent, as the status bar says it (a byte count overflows its int)
        self.figures = QLabel("")  # bytes, rate, time left
        self.figures.setWordWrap(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the download; the next Start resumes it from the bytes kept")
        row = QHBoxLayout()
        row.addWidget(self.figures, 1)
        row.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 6)
        layout.addWidget(self.title)
        layout.addWidget(self.bar)
        layout.addLayout(row)
        self.hide()

    def show_progress(self, event: DownloadProgress | None) -> None:
        """Where the download stands, or hidden (None: no download going on)."""
        if event is None:
            self.hide()
            return
        from core.download import cache_folder

        self.title.setText(f"Downloading {event.repo_id} (once: later starts read it from the cache)")
        self.setToolTip(f"into the Hugging Face cache, {cache_folder()} (HF_HOME sets where it is)")
        self.bar.setValue(percent(event))
        self.figures.setText(download_text(event))
        self.show()


def scaled_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The picture resized to `size` (width, height) with Qt's smooth scaling."""
    rgb = np.ascontiguousarray(rgb)
    image = QImage(rgb.data, rgb.shape[1], rgb.shape[0], rgb.strides[0], QImage.Format.Format_RGB888)
    scaled = image.scaled(
        *size, Qt.AspectRatioMode.IgnoreAspectRatio, Qt.TransformationMode.SmoothTransformation
    )
    scaled = scaled.convertToFormat(QImage.Format.Format_RGB888)
    view = np.frombuffer(scaled.constBits(), np.uint8, scaled.sizeInBytes()).reshape(
        scaled.height(), scaled.bytesPerLine()
    )
    return view[:, : size[0] * 3].reshape(size[1], size[0], 3).copy()


def dropped_file(mime) -> str | None:
    """The one local file a drag carries (a video to use as the source), or None."""
    urls = mime.urls() if mime.hasUrls() else []
    if len(urls) == 1 and urls[0].isLocalFile() and Path(urls[0].toLocalFile()).is_file():
        return urls[0].toLocalFile()
    return None
