"""Running the command lines in tests: `python -m core` in a subprocess, a CLI's main(argv) in process.

CLIP is the committed demo clip (8 s) that the CLI tests stream; a usage error must end a command
with status 2 and the one line `error: ...`, which assert_one_error_line checks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT / "assets" / "demo_clip.mp4"


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """`python -m core ARGS` in a subprocess from the repository root, offline, its output captured."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "core", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def run_main(main, argv: list[str], capsys) -> tuple[int, list[str]]:
    """Exit status and stderr lines of a CLI's main(argv), in process."""
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    return status, capsys.readouterr().err.splitlines()


def assert_one_error_line(status: int, lines: list[str], *words: str) -> None:
    """Status 2 and a single stderr line `error: ...` that contains each of `words`."""
    assert status == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for word in words:
        assert word in lines[0], lines
