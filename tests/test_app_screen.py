"""The real app window on a real X display (Xvfb): a screenshot while commentary is shown.

The screenshot is kept in runs/screenshots/ (a build artefact) for people to look at.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clihelpers import CLIP
from livehelpers import Display, app_env

ROOT = Path(__file__).resolve().parents[1]
ARTEFACTS = ROOT / "runs" / "screenshots"


def test_screenshot_of_the_window_shows_the_overlay_over_the_video(tiny_dir, tmp_path):
    pytest.importorskip("PySide6")
    display = Display(1280, 720).start()
    try:
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        png, result = ARTEFACTS / "app_window.png", tmp_path / "result.json"
        run = subprocess.run(
            [
                sys.executable,
                str(ROOT / "tests" / "live" / "app_screenshot.py"),
                str(tiny_dir),
                str(CLIP),
                str(png),
                str(result),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            env=app_env("xcb"),
            cwd=ROOT,
        )
    finally:
        display.stop()
    assert run.returncode == 0, run.stderr[-3000:]
    numbers = json.loads(result.read_text())
    assert numbers["log_lines"] >= 2 and numbers["overlay_lines"] >= 1
    assert numbers["picture"][2] >= 400  # the video is shown at a useful size
    # Above the subtitles the screen shows the source frame (scaling aside); the band does not.
    assert numbers["upper_diff"] < 12
    assert numbers["subtitle_band_diff"] > 3 * numbers["upper_diff"] + 10
    assert png.stat().st_size > 20_000
