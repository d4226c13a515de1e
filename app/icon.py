"""The app's icon, drawn with QPainter at every size a desktop asks for (no image file to ship or find).

A screen (a rounded dark-blue square) with a play mark and two subtitle lines on a band: live video
with commentary. `python -m app.icon OUT.png` writes it at 256 px (assets/streamvlm.png is that file,
for desktop entries and documentation).
"""

from __future__ import annotations

import sys

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QLinearGradient, QPainter, QPixmap, QPolygonF

SIZES = (16, 24, 32, 48, 64, 128, 256)


def icon_pixmap(size: int) -> QPixmap:
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    s = float(size)
    gradient = QLinearGradient(0, 0, 0, s)
    gradient.setColorAt(0, QColor("#2b6cb0"))
    gradient.setColorAt(1, QColor("#1a365d"))
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(gradient)
    painter.drawRoundedRect(QRectF(0.03 * s, 0.03 * s, 0.94 * s, 0.94 * s), 0.18 * s, 0.18 * s)
    painter.setBrush(QColor("#ffffff"))
    painter.drawPolygon(
        QPolygonF([QPointF(0.38 * s, 0.18 * s), QPointF(0.38 * s, 0.56 * s), QPointF(0.68 * s, 0.37 * s)])
    )
    painter.setBrush(QColor(0, 0, 0, 120))
    painter.drawRoundedRect(QRectF(0.12 * s, 0.64 * s, 0.76 * s, 0.24 * s), 0.04 * s, 0.04 * s)
    painter.setBrush(QColor("#f6e05e"))  # the commentary: two lines of text
    line = max(1.0, 0.05 * s)
    painter.drawRoundedRect(QRectF(0.2 * s, 0.69 * s, 0.6 * s, line), line / 2, line / 2)
    painter.drawRoundedRect(QRectF(0.28 * s, 0.78 * s, 0.44 * s, line), line / 2, line / 2)
    painter.end()
    return pixmap


def app_icon() -> QIcon:
    icon = QIcon()
    for size in SIZES:
        icon.addPixmap(icon_pixmap(size))
    return icon


if __name__ == "__main__":
    from PySide6.QtGui import QGuiApplication

    app = QGuiApplication(["streamvlm"])
    if len(sys.argv) != 2 or not sys.argv[1].endswith(".png"):
        print("usage: python -m app.icon OUT.png", file=sys.stderr)
        sys.exit(2)
    if not icon_pixmap(256).save(sys.argv[1]):
        print(f"error: cannot write '{sys.argv[1]}'", file=sys.stderr)
        sys.exit(2)
