"""While a run goes on, Python's cyclic garbage collection happens in the GUI thread only
(app/collector.py): one in a worker thread that frees a Qt object crashes the process (CI met it
during a model load). Every collection during a real run is recorded with its thread."""

from __future__ import annotations

import gc
import os
import threading

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

pytest.importorskip("PySide6")

from PySide6.QtCore import QSettings  # noqa: E402

from app.window import MainWindow  # noqa: E402
from clihelpers import CLIP  # noqa: E402


def test_every_collection_during_a_run_is_in_the_gui_thread_and_collection_is_back_after(
    qtbot, tmp_path, tiny_dir, monkeypatch
):
    monkeypatch.setattr(gc, "get_threshold", lambda: (50, 10, 10))  # the timer collects often
    threads = []

    def record(phase, info):
        if phase == "start":
            threads.append(threading.current_thread().name)

    win = MainWindow(settings=QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(win)
    win.model_edit.setText(str(tiny_dir))
    win.source_box.setCurrentText(str(CLIP))
    gc.callbacks.append(record)
    try:
        win.start()
        assert not gc.isenabled()
        qtbot.waitUntil(lambda: len(win.lines) >= 2, timeout=60_000)
        win.stop()
        qtbot.waitUntil(lambda: win.thread is None, timeout=10_000)
        qtbot.waitUntil(gc.isenabled, timeout=5_000)  # handed back once the worker's thread ended
    finally:
        gc.callbacks.remove(record)
    assert threads and set(threads) == {threading.main_thread().name}, sorted(set(threads))
