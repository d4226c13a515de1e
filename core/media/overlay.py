"""Commentary overlays: the latest lines drawn over the video in a subtitle style.

One renderer serves every place that shows commentary over a picture (the recorder burns it into
the video; the GUI shows the same thing live), so what is recorded is what was seen. The style
reads over any background: white text with a dark outline on a translucent dark band. The newest
line is at the edge (bottom or top); older lines stack away from it and fade out over
`fade_seconds`; at most `max_lines` show.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from core.types import Commentary

POSITIONS = ("bottom", "top")


@dataclass(frozen=True)
class OverlayStyle:
    position: str = "bottom"
    font_scale: float = 1.0  # 1.0: text 1/20 of the picture's height
    max_lines: int = 3
    fade_seconds: float = 8.0  # a line is gone this long after it appeared
    band_opacity: float = 0.55

    def __post_init__(self) -> None:
        problems = []
        if self.position not in POSITIONS:
            problems.append(f"position must be one of {', '.join(POSITIONS)} (got {self.position!r})")
        if not 0.2 <= self.font_scale <= 5:
            problems.append(f"font_scale must be between 0.2 and 5 (got {self.font_scale})")
        if self.max_lines < 1:
            problems.append(f"max_lines must be at least 1 (got {self.max_lines})")
        if self.fade_seconds <= 0:
            problems.append(f"fade_seconds must be positive (got {self.fade_seconds})")
        if not 0 <= self.band_opacity <= 1:
            problems.append(f"band_opacity must be between 0 and 1 (got {self.band_opacity})")
        if problems:
            raise ValueError("invalid overlay style: " + "; ".join(problems))


class Overlay:
    """The lines on screen at a given time, and their drawing. Lines are added in time order."""

    def __init__(self, style: OverlayStyle | None = None) -> None:
        self.style = style or OverlayStyle()
        self._lines: deque[tuple[float, str]] = deque(maxlen=self.style.max_lines)
        self._lock = threading.Lock()  # lines arrive from inference while capture draws

    def add(self, commentary: Commentary, shown_at: float | None = None) -> None:
        """Show `commentary` from `shown_at` (stream seconds; default: the end of its chunk, when a
        live viewer first sees it)."""
        text = commentary.text.strip()
        if text:
            with self._lock:
                self._lines.append((commentary.end if shown_at is None else shown_at, text))

    def lines_at(self, t: float) -> list[tuple[str, float]]:
        """(text, opacity) of the lines visible at stream time `t`, newest first."""
        fade = self.style.fade_seconds
        visible = []
        with self._lock:
            lines = list(self._lines)
        for shown_at, text in reversed(lines):
            age = t - shown_at
            if 0 <= age < fade:
                visible.append((text, 1.0 - max(0.0, age - fade / 2) / (fade / 2)))  # full, then fading
        return visible

    def draw(self, rgb: np.ndarray, t: float) -> np.ndarray:
        """A copy of the frame (uint8 [H, W, 3]) with the lines of time `t` drawn in; the frame itself
        when nothing shows."""
        lines = self.lines_at(t)
        if not lines:
            return rgb
        height, width = rgb.shape[:2]
        size = max(10, round(height / 20 * self.style.font_scale))
        font = _font(size)
        pad = size // 3
        image = Image.fromarray(rgb).convert("RGBA")
        layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        y = height - pad if self.style.position == "bottom" else pad
        for text, opacity in lines:
            wrapped = _wrap(draw, text, font, width - 4 * pad)
            box = draw.multiline_textbbox((0, 0), wrapped, font=font, stroke_width=max(1, size // 12))
            text_w, text_h = box[2] - box[0], box[3] - box[1]
            top = y - text_h - 2 * pad if self.style.position == "bottom" else y
            left = (width - text_w) // 2
            band = round(255 * self.style.band_opacity * opacity)
            draw.rectangle(
                (left - 2 * pad, top, left + text_w + 2 * pad, top + text_h + 2 * pad), fill=(0, 0, 0, band)
            )
            alpha = round(255 * opacity)
            draw.multiline_text(
                (left - box[0], top + pad - box[1]),
                wrapped,
                font=font,
                fill=(255, 255, 255, alpha),
                stroke_width=max(1, size // 12),
                stroke_fill=(0, 0, 0, alpha),
                align="center",
            )
            y = top - pad // 2 if self.style.position == "bottom" else top + text_h + 2 * pad + pad // 2
            if y < 0 or y > height:
                break
        return np.asarray(Image.alpha_composite(image, layer).convert("RGB"))


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled scalable font: no system fonts needed


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont, max_width: int) -> str:
    """Break `text` into lines no wider than `max_width` pixels (a word longer than that stands alone)."""
    lines, current = [], ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if current and draw.textlength(trial, font=font) > max_width:
            lines.append(current)
            current = word
        else:
            current = trial
    if current:
        lines.append(current)
    return "\n".join(lines)
