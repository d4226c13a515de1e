"""Closing the app while its model loads (loading cannot be interrupted): the process waits for the load
to end, says why, and exits cleanly. Before, the window took the loading thread with it and Qt aborted
the process ("QThread: Destroyed while thread is still running", exit 134). Run in a child process:
that failure kills the process it happens in."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from clihelpers import CLIP, ROOT

pytest.importorskip("PySide6")

PROBE = """
import sys, time
import core.loading
real = core.loading.model_from_config

def slow(config):  # a checkpoint that takes seconds to read
    time.sleep(4.0)
    return real(config)

core.loading.model_from_config = slow
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication
from app.__main__ import main, application

def close_while_loading():
    from app.window import MainWindow
    (window,) = [w for w in QApplication.topLevelWidgets() if isinstance(w, MainWindow)]
    print("closing in:", window.run.phase.value, flush=True)
    window.close()

application()
QTimer.singleShot(1500, close_while_loading)
sys.exit(main(["--model", {model!r}, "--source", {source!r}, "--start"]))
"""


def test_closing_the_window_while_the_model_loads_waits_for_it_and_exits_cleanly(tiny_dir, tmp_path):
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PROBE.format(model=str(tiny_dir), source=str(CLIP)))],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert "closing in: loading model" in done.stdout, done.stdout + done.stderr[-2000:]
    assert done.returncode == 0, done.stderr[-2000:]
    assert "waiting for the model to finish loading" in done.stderr
    assert "Destroyed while thread" not in done.stderr
