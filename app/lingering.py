"""Worker threads that outlive their window.

Loading a model cannot be interrupted: a window closed (or a run stopped) while one loads lets its
worker finish by itself, which can take as long as reading the checkpoint. Qt aborts the whole process
("QThread: Destroyed while thread is still running") when a running QThread's object is deleted, as it
was with its window; so such a thread is handed here, unparented and held until it ends, and the app
waits for it before the interpreter exits (`wait_all`, also registered with atexit), saying why.
"""

from __future__ import annotations

import atexit
import sys

from PySide6.QtCore import QObject, QThread

_LINGERING: list[tuple[QThread, QObject | None]] = []  # each thread with its worker, held until both end


def let_finish(thread: QThread, worker: QObject | None, waited_ms: int = 2000) -> None:
    """Wait up to `waited_ms` for `thread` to end; if it has not, keep it (and `worker`, which runs in it)
    alive until it ends by itself, whatever happens to the window that started it."""
    thread.quit()
    if thread.wait(waited_ms):
        return
    thread.setParent(None)
    _LINGERING[:] = [(t, w) for t, w in _LINGERING if not t.isFinished()]
    _LINGERING.append((thread, worker))


def lingering() -> int:
    """How many handed-over threads are still running."""
    return sum(not thread.isFinished() for thread, _ in _LINGERING)


def wait_all() -> None:
    """Block until every handed-over thread has ended (the app's last step, and at exit)."""
    if lingering():
        print(
            "waiting for the model to finish loading before quitting (it cannot be interrupted)",
            file=sys.stderr,
        )
    for thread, _ in _LINGERING:
        thread.wait()
    _LINGERING.clear()


atexit.register(wait_all)
