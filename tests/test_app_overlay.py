"""The commentary overlay reads on any picture: text sized from the picture's height, bands that never
cover more than `max_cover` of it, missing glyphs from a fallback font, and in the app drawn at the
view's resolution (not at the source's and scaled up).

Stated sizes: the font is TEXT_HEIGHT (1/20) of the picture's height times `font_scale`, at least
MIN_TEXT_PX pixels; capital letters are then 2.5-5 % of the picture's height (a cap height is about
0.7 of the font size), and all bands together at most `max_cover` (40 %) of it.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from core.media.overlay import MIN_TEXT_PX, Overlay, OverlayStyle, has_glyph  # noqa: E402
from core.types import Commentary  # noqa: E402

GREEN = (30, 120, 30)
LONG = (
    "The winger cuts inside past two defenders, looks up, and curls a shot towards the far post "
    "where the keeper just gets a fingertip to it and pushes it wide for a corner"
)


def picture(width: int, height: int) -> np.ndarray:
    return np.full((height, width, 3), GREEN, np.uint8)


def ink_runs(drawn: np.ndarray) -> list[int]:
    """Heights of the runs of picture rows holding white text (the glyphs' fill)."""
    white = (drawn >= 200).all(axis=2).any(axis=1)
    runs, length = [], 0
    for row in white:
        if row:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    return runs + ([length] if length else [])


def covered_rows(drawn: np.ndarray, plain: np.ndarray) -> int:
    return int((drawn != plain).any(axis=(1, 2)).sum())


@pytest.mark.parametrize("size", [(160, 90), (640, 360), (3840, 2160)])
def test_text_height_is_a_stated_fraction_of_the_picture(size):
    width, height = size
    overlay = Overlay()
    overlay.add(Commentary(0.0, 1.0, "GOAL FOR THE HOME TEAM"))  # capitals: the ink is the cap height
    drawn = overlay.draw(picture(width, height), 1.0)
    (ink,) = ink_runs(drawn)
    font_px = max(MIN_TEXT_PX, round(height / 20))
    assert overlay.style.text_px(height) == font_px
    if font_px > MIN_TEXT_PX:
        assert 0.025 <= ink / height <= 0.05, f"capitals {ink} px on a {height} px picture"
    else:  # a small picture: the smallest size that reads, never more than the font size
        assert 5 <= ink <= MIN_TEXT_PX


@pytest.mark.parametrize("size", [(160, 90), (3840, 2160)])
@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_the_bands_cover_at_most_max_cover_with_the_newest_line_first(size, scale):
    width, height = size
    style = OverlayStyle(font_scale=scale, max_lines=5)
    overlay = Overlay(style)
    for k in range(5):
        overlay.add(Commentary(float(k), k + 1.0, f"Line {k}: {LONG}"))
    plain = picture(width, height)
    drawn = overlay.draw(plain, 5.0)
    assert 0 < covered_rows(drawn, plain) <= style.max_cover * height
    blocks = overlay.layout(width, height, 5.0)
    newest = "".join(text for text, _ in blocks[0].rows[0])
    assert newest.startswith("Line 4:")  # the newest line is the one kept
    assert len(blocks) <= 5
    last_row = "".join(text for text, _ in blocks[-1].rows[-1])
    shown = " ".join("".join(text for text, _ in row) for block in blocks for row in block.rows)
    if len(shown) < 5 * len(LONG):  # not everything fits: what is cut says so, nothing is drawn half
        assert last_row.endswith("…") or len(blocks) < 5
    assert all(0 <= b.top and b.top + b.height <= height for b in blocks)


def test_top_position_stacks_downwards_within_the_picture():
    overlay = Overlay(OverlayStyle(position="top"))
    for k in range(3):
        overlay.add(Commentary(float(k), k + 1.0, f"line {k}"))
    blocks = overlay.layout(640, 360, 3.0)
    assert [b.top for b in blocks] == sorted(b.top for b in blocks) and blocks[0].top < 40


def test_a_tiny_picture_shows_nothing_rather_than_a_band_over_all_of_it():
    overlay = Overlay()
    overlay.add(Commentary(0.0, 1.0, "Kick-off"))
    plain = picture(40, 20)
    assert overlay.draw(plain, 1.0) is plain


def test_the_held_last_frame_shows_the_line_that_came_after_it():
    overlay = Overlay()
    overlay.add(Commentary(2.0, 3.0, "Full time"))  # shown from 3.0, the chunk's end
    last_frame_t = 2.9  # the file's last frame comes before that
    assert overlay.lines_at(last_frame_t) == []
    assert overlay.hold_time(last_frame_t) == 3.0 and overlay.lines_at(3.0)[0][0] == "Full time"
    assert overlay.hold_time(10.0) == 10.0  # never earlier than the frame


def test_characters_the_bundled_font_lacks_are_drawn_in_a_fallback_font():
    from core.media.overlay import _font_for

    assert not has_glyph(None, "Ж") and not has_glyph(None, "\ufffd")  # Pillow's bundled font lacks them
    if _font_for("Ж") is None:
        pytest.skip("no system font with Cyrillic (apt-get install fonts-dejavu-core)")
    boxes, text = Overlay(), Overlay()
    boxes.add(Commentary(0.0, 1.0, "\uffff\uffff\uffff \uffff\uffff"))  # noncharacters: boxes in any font
    text.add(Commentary(0.0, 1.0, "Жора é \ufffd"))
    plain = picture(640, 360)
    with_boxes, with_text = boxes.draw(plain, 1.0), text.draw(plain, 1.0)
    assert (with_text != with_boxes).any()
    assert has_glyph(_font_for("Ж"), "Ж") and has_glyph(_font_for("é"), "é")


def test_the_app_draws_the_overlay_at_the_views_resolution(qtbot, tmp_path):
    """A 160x90 source in a larger view: the text is sized from the shown picture, not from the source."""
    from PySide6.QtCore import QSettings

    from app.window import MainWindow
    from core.types import Frame

    win = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(win)
    win.show()
    win.view.resize(800, 450)
    win.on_frame(Frame(picture(160, 90), 2.0))
    win.on_commentary(Commentary(0.0, 1.0, "GOAL FOR THE HOME TEAM"))
    shown = win.view.picture
    assert shown.shape[0] >= 270 and shown.shape[1] == round(shown.shape[0] * 16 / 9)
    (ink,) = ink_runs(shown)
    assert 0.025 <= ink / shown.shape[0] <= 0.05, f"capitals {ink} px on a {shown.shape[0]} px picture"
    win.close()


def test_an_answer_is_marked_over_the_video_as_in_the_subtitles_and_burned_into_recordings(tmp_path):
    """The overlay (the app's and the recorder's, one renderer) shows an answer as 'A: ...': drawn
    differently from the same words as commentary; an empty answer shows nothing, marked or not."""
    from core.media.recorder import Recorder

    answer = Commentary(0.0, 1.0, "Red team", question="Who is winning?")
    with Recorder(tmp_path / "rec.mp4", 10.0) as recorder:
        recorder.add(answer)
        recorder.add(Commentary(1.0, 2.0, "  ", question="And now?"))
        assert recorder.overlay.lines_at(1.5) == [("A: Red team", 1.0)]
        answered = recorder.overlay.draw(picture(640, 360), 1.5)
    said = Overlay()
    said.add(Commentary(0.0, 1.0, "Red team"))
    assert said.lines_at(1.5) == [("Red team", 1.0)]
    assert (said.draw(picture(640, 360), 1.5) != answered).any()
