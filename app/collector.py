"""Python's cyclic garbage collection runs in the GUI thread only, while the app's worker threads run.

A collection runs in whichever thread allocates when a generation's threshold is passed. One that
runs in a worker thread (loading a model allocates a lot) and frees a Qt object left in a reference
cycle (a closed dialog's, an earlier run's) deletes it outside the GUI thread, and the process dies
with a segmentation fault: CI met it, "Garbage-collecting" in the worker's stack during a tokenizer
load. The cure pyqtgraph uses (its GarbageCollector): switch automatic collection off and collect
from a timer in the GUI thread, by the same thresholds. Here only while a worker runs (`watch`), so
the rest of the time Python collects as usual; `collect` is the workers' explicit collection (to
free a model before loading the next), done by the GUI thread for them.
"""

from __future__ import annotations

import gc
import threading

from PySide6.QtCore import QCoreApplication, QObject, QThread, QTimer, Signal, Slot

INTERVAL_MS = 250  # a timer tick: at most this long between a threshold passed and its collection


class _Collector(QObject):
    """Lives in the GUI thread (a child of the application): counts the watched threads running,
    holds automatic collection off while any does, and collects on its timer and when asked."""

    _asked = Signal(object)  # a threading.Event to set once collected

    def __init__(self, parent: QObject) -> None:
        super().__init__(parent)
        self.running = 0
        self._was_enabled = True
        self._timer = QTimer(self)
        self._timer.setInterval(INTERVAL_MS)
        self._timer.timeout.connect(self.check)
        self._asked.connect(self._collect_for)  # queued to this (the GUI) thread from a worker's

    def start(self) -> None:
        if self.running == 0:
            self._was_enabled = gc.isenabled()
            gc.disable()
            self._timer.start()
        self.running += 1

    @Slot()
    def finished(self) -> None:
        self.running -= 1
        if self.running == 0:
            self._timer.stop()
            if self._was_enabled:
                gc.enable()

    @Slot()
    def check(self) -> None:
        """A collection of each generation whose threshold has passed, as the interpreter would."""
        count, threshold = gc.get_count(), gc.get_threshold()
        for generation in (2, 1, 0):
            if count[generation] > threshold[generation]:
                gc.collect(generation)
                return

    @Slot(object)
    def _collect_for(self, done: threading.Event) -> None:
        gc.collect()
        done.set()


def _collector() -> _Collector:
    app = QCoreApplication.instance()
    found = app.findChild(_Collector)
    return found if found is not None else _Collector(app)


def watch(thread: QThread) -> None:
    """Hold automatic collection off from now until `thread` has finished, collecting in the GUI thread
    meanwhile. Call from the GUI thread, before `thread.start()`."""
    collector = _collector()
    collector.start()
    thread.finished.connect(collector.finished)  # queued: runs in the GUI thread


def collect(timeout: float = 5.0) -> None:
    """A full collection that never runs in a worker thread: at once in the GUI thread; from another
    thread, done by the GUI thread (waiting up to `timeout` s, as it may be busy or not looping)."""
    app = QCoreApplication.instance()
    if app is None or QThread.currentThread() is app.thread():
        gc.collect()
        return
    done = threading.Event()
    _collector()._asked.emit(done)
    done.wait(timeout)
