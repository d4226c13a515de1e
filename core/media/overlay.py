"""Commentary overlays: the latest lines drawn over the video in a subtitle style.

One renderer serves every place that shows commentary over a picture (the recorder burns it into
the video at the recording's resolution; the GUI draws it at the resolution of its view, after
scaling the frame), so what is recorded is what was seen. The style reads over any background:
white text with a dark outline on a translucent dark band. The newest line is at the edge (bottom
or top); older lines stack away from it and fade out over `fade_seconds`; at most `max_lines` show.
An answer to a question is marked 'A: ' (`Commentary.marked`), here as in the subtitles.

Sizes follow the picture, so the overlay reads the same on a 160x90 source and a 4K one: the text is
`TEXT_HEIGHT` of the picture's height (times `font_scale`), never below `MIN_TEXT_PX` pixels, and the
bands never cover more than `max_cover` of the height: older lines that do not fit are left out, and
a newest line too long for the space is cut with an ellipsis. Characters the bundled font lacks are
drawn in a system font that has them (found through fontconfig where there is one), so they do not
show as boxes.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import unicodedata
from collections import deque
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from core.types import Commentary

POSITIONS = ("bottom", "top")
TEXT_HEIGHT = 1 / 20  # the font size, as a fraction of the picture's height, at font_scale 1
MIN_TEXT_PX = 9  # smaller text does not read; a small picture gets this size (and fewer lines)
ELLIPSIS = "…"


@dataclass(frozen=True)
class OverlayStyle:
    position: str = "bottom"
    font_scale: float = 1.0  # 1.0: text TEXT_HEIGHT of the picture's height
    max_lines: int = 3
    fade_seconds: float = 8.0  # a line is gone this long after it appeared
    band_opacity: float = 0.55
    max_cover: float = 0.4  # the most of the picture's height the bands may cover

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
        if not 0.1 <= self.max_cover <= 1:
            problems.append(f"max_cover must be between 0.1 and 1 (got {self.max_cover})")
        if problems:
            raise ValueError("invalid overlay style: " + "; ".join(problems))

    def text_px(self, height: int) -> int:
        """The font size on a picture `height` pixels high."""
        return max(MIN_TEXT_PX, round(height * TEXT_HEIGHT * self.font_scale))


Run = tuple[str, ImageFont.FreeTypeFont]  # text drawn in one font


@dataclass(frozen=True)
class Block:
    """One line of commentary as drawn: its rows of text runs, its band and its opacity."""

    rows: tuple[tuple[Run, ...], ...]
    top: int  # the band's top, in picture pixels
    height: int  # the band's height
    opacity: float


class Overlay:
    """The lines on screen at a given time, and their drawing. Lines are added in time order."""

    def __init__(self, style: OverlayStyle | None = None) -> None:
        self.style = style or OverlayStyle()
        self._lines: deque[tuple[float, str]] = deque(maxlen=self.style.max_lines)
        self._lock = threading.Lock()  # lines arrive from inference while capture draws

    def add(self, commentary: Commentary, shown_at: float | None = None) -> None:
        """Show `commentary` from `shown_at` (stream seconds; default: the end of its chunk, when a
        live viewer first sees it). An answer shows marked as one ('A: ...'), as in the subtitles."""
        if commentary.text.strip():  # an empty answer is no line, marked or not
            with self._lock:
                self._lines.append(
                    (commentary.end if shown_at is None else shown_at, commentary.marked.strip())
                )

    def hold_time(self, t: float) -> float:
        """The time to draw a held last frame at (the stream is over): `t`, or the moment the newest
        line appears if that is later, so the commentary that came after the last frame is on it."""
        with self._lock:
            newest = self._lines[-1][0] if self._lines else t
        return max(t, newest)

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

    def layout(self, width: int, height: int, t: float) -> list[Block]:
        """The bands of time `t` on a `width` x `height` picture, newest first: those that fit."""
        style = self.style
        size = style.text_px(height)
        font, pad = _font(size), max(2, size // 3)
        row_h = _row_height(font)
        room = int(height * style.max_cover)
        blocks, used = [], 0
        for text, opacity in self.lines_at(t):
            rows = _wrap(text, size, width - 4 * pad)
            fit = (room - used - 2 * pad) // row_h
            if fit < 1:
                break
            if len(rows) > fit:
                if blocks:  # an older line that does not fit whole is left out
                    break
                rows = rows[: fit - 1] + [_ellipsized(rows[fit - 1], size, width - 4 * pad)]  # a new list
            band = len(rows) * row_h + 2 * pad
            if style.position == "bottom":
                top = height - pad - used - band
            else:
                top = pad + used
            blocks.append(Block(tuple(tuple(r) for r in rows), top, band, opacity))
            used += band + pad // 2
        return blocks

    def draw(self, rgb: np.ndarray, t: float) -> np.ndarray:
        """A copy of the frame (uint8 [H, W, 3]) with the lines of time `t` drawn in; the frame itself
        when nothing shows."""
        height, width = rgb.shape[:2]
        blocks = self.layout(width, height, t)
        if not blocks:
            return rgb
        size = self.style.text_px(height)
        font, pad = _font(size), max(2, size // 3)
        ascent, _ = font.getmetrics()
        row_h = _row_height(font)
        stroke = max(1, size // 12)
        y0 = max(0, min(b.top for b in blocks))
        y1 = min(height, max(b.top + b.height for b in blocks))
        out = np.array(rgb, copy=True)
        region = Image.fromarray(np.ascontiguousarray(out[y0:y1])).convert("RGBA")  # only the bands' rows
        layer = Image.new("RGBA", region.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        for block in blocks:
            alpha = round(255 * block.opacity)
            widths = [sum(f.getlength(text) for text, f in row) for row in block.rows]
            left = (width - max(widths)) / 2
            band = round(255 * self.style.band_opacity * block.opacity)
            top = block.top - y0
            draw.rectangle(
                (left - 2 * pad, top, left + max(widths) + 2 * pad, top + block.height - 1),
                fill=(0, 0, 0, band),
            )
            for k, (row, row_w) in enumerate(zip(block.rows, widths, strict=True)):
                x, baseline = (width - row_w) / 2, top + pad + k * row_h + ascent
                for text, run_font in row:
                    draw.text(
                        (x, baseline),
                        text,
                        font=run_font,
                        anchor="ls",
                        fill=(255, 255, 255, alpha),
                        stroke_width=stroke,
                        stroke_fill=(0, 0, 0, alpha),
                    )
                    x += run_font.getlength(text)
        out[y0:y1] = np.asarray(Image.alpha_composite(region, layer).convert("RGB"))
        return out


# -- fonts -----------------------------------------------------------------------------------------------

# Broad-coverage fonts looked up by file name where fontconfig is missing (Pillow searches the system's
# font folders on Linux, macOS and Windows).
_FALLBACK_FILES = (
    "DejaVuSans.ttf",
    "NotoSans-Regular.ttf",
    "Arial Unicode.ttf",
    "arialuni.ttf",
    "seguisym.ttf",
    "msyh.ttc",
    "NotoSansCJK-Regular.ttc",
    "DroidSansFallbackFull.ttf",
)
_fallback_paths: list[str] = []  # font files found so far, in the order they were needed
_fonts_lock = threading.Lock()


@lru_cache(maxsize=64)
def _font(size: int, path: str | None = None) -> ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font (no system fonts needed), or the font file at `path`."""
    return ImageFont.load_default(size=size) if path is None else ImageFont.truetype(path, size)


def _row_height(font: ImageFont.FreeTypeFont) -> int:
    ascent, descent = font.getmetrics()
    return ascent + descent + max(1, font.size // 10)


@lru_cache(maxsize=4096)
def has_glyph(path: str | None, char: str) -> bool:
    """Whether the font (None: the bundled one) draws `char` with a glyph of its own, not its
    'missing glyph' box: a missing character renders exactly as a noncharacter does."""
    if char.isspace() or unicodedata.category(char) in ("Cc", "Cf"):
        return True
    font = _font(24, path)

    def look(c: str) -> tuple:
        mask = font.getmask(c)
        return mask.size, bytes(mask), font.getlength(c)

    return look(char) != look("\uffff")


@lru_cache(maxsize=4096)
def _font_for(char: str) -> str | None:
    """The font file for `char`: None (the bundled font) when it has the glyph or nothing does."""
    if has_glyph(None, char):
        return None
    with _fonts_lock:
        known = list(_fallback_paths)
    for path in known + _system_fonts(char):
        if has_glyph(path, char):
            with _fonts_lock:
                if path not in _fallback_paths:
                    _fallback_paths.append(path)
            return path
    return None  # no font has it: the bundled font's box says so


def _system_fonts(char: str) -> list[str]:
    """Font files that may have `char`: fontconfig's pick for it, then the well-known ones."""
    found = []
    if shutil.which("fc-match"):
        try:
            answer = subprocess.run(
                ["fc-match", "-f", "%{file}", f":charset={ord(char):x}"],
                capture_output=True,
                text=True,
                timeout=5,
            )
            if answer.returncode == 0 and answer.stdout.strip():
                found.append(answer.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    for name in _FALLBACK_FILES:
        try:
            found.append(_font(24, name).path)
        except OSError:
            continue
    return found


def _runs(text: str, size: int) -> list[Run]:
    """`text` split into runs of one font each: the bundled one, or a fallback for missing glyphs."""
    runs: list[Run] = []
    current, current_path = "", None
    for char in text:
        path = _font_for(char) if not char.isspace() else current_path
        if current and path != current_path:
            runs.append((current, _font(size, current_path)))
            current = ""
        current, current_path = current + char, path
    if current:
        runs.append((current, _font(size, current_path)))
    return runs


def _width(runs: list[Run]) -> float:
    return sum(font.getlength(text) for text, font in runs)


@lru_cache(maxsize=256)  # a line is drawn on every frame while it shows
def _wrap(text: str, size: int, max_width: float) -> list[list[Run]]:
    """Rows of runs no wider than `max_width` pixels; a word wider than a row is broken between letters.
    (Callers copy the rows they change: the list is cached.)"""
    rows: list[str] = []
    current = ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if _width(_runs(trial, size)) <= max_width:
            current = trial
            continue
        if current:
            rows.append(current)
        current = ""
        for char in word:  # `word` alone may be too wide too
            if current and _width(_runs(current + char, size)) > max_width:
                rows.append(current)
                current = ""
            current += char
    if current:
        rows.append(current)
    return [_runs(row, size) for row in rows]


def _ellipsized(row: list[Run], size: int, max_width: float) -> list[Run]:
    """The row with an ellipsis at its end, cut so that it fits."""
    text = "".join(t for t, _ in row).rstrip()
    while text and _width(_runs(text + ELLIPSIS, size)) > max_width:
        text = text[:-1].rstrip()
    return _runs(text + ELLIPSIS, size)
