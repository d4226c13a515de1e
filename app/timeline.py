"""The app's startup timeline, for `python -m evals startup --app`; off unless asked.

When the environment variable STREAMVLM_APP_TIMELINE names a file, `python -m app` appends one JSON line
to it per event, `{"event": NAME, "t": time.time(), ...}`:

- `python`: main() began (the interpreter runs and the app's first modules are imported);
- `shown`: the event loop's first turn after the window was shown;
- for the run that --start began, as the window receives them (in the GUI thread, when the user sees them):
  `phase` (`phase`, `detail`: each step the worker reports: loading, preparing, streaming, ended),
  `chunk` (each chunk's reply: its stream times, `ran`: the wall-clock time the pipeline handed it over,
  `latency`: the pipeline's seconds from the chunk's video being complete to its reply, `text`,
  `skipped`: chunks dropped as late so far, `compiled`: whether the compiled modules ran it, read in the
  worker's thread as it came out, and the model's `device`, `dtype` and `compile_thread_s`),
  `failed` (`reason`) and `finished`.

Each line is written with the file opened and closed for it, so an app killed at any moment leaves every
line before. Without the variable nothing is connected and nothing is written: what a user sees does not
change with it.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from core.errors import StreamVLMError

ENV = "STREAMVLM_APP_TIMELINE"


class Timeline:
    """Appends the app's events to one JSON-lines file (thread-safe)."""

    def __init__(self, path: Path, started: float) -> None:
        """`started`: when main() began, the `python` event's time."""
        self.path = path
        self._lock = threading.Lock()
        self._receiver = None  # the QObject that gets the worker's signals in the GUI thread
        try:
            self.record("python", t=started)
        except OSError as exc:
            raise StreamVLMError(
                f"{ENV}={path} cannot be written ({exc.strerror}); name a file in a writable folder"
            ) from None

    @classmethod
    def from_env(cls, environ: dict[str, str], started: float) -> Timeline | None:
        """The timeline asked for by `environ`, or None (the default: nothing recorded)."""
        path = environ.get(ENV)
        return cls(Path(path), started) if path else None

    def record(self, event: str, t: float | None = None, **fields: Any) -> None:
        line = json.dumps({"event": event, "t": time.time() if t is None else t, **fields})
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def watch(self, window) -> None:
        """Record the window's first shown turn of the event loop and, if a run started (--start), its run.
        Connected just after Start: the run's first steps (opening the source) may come before, its stream
        cannot (it follows the model's loading)."""
        from PySide6.QtCore import QTimer

        QTimer.singleShot(0, lambda: self.record("shown"))
        if window.worker is not None:
            self._receiver = _receiver(self, window.worker)


def _receiver(timeline: Timeline, worker):
    """A QObject of the GUI thread that records `worker`'s signals as the window receives them (queued
    after the window's own slots), and what only the worker's thread knows at the moment a chunk is done."""
    from PySide6.QtCore import QObject, Qt, Slot

    from evals.startup import device_name

    ran: dict[float, tuple[float, bool]] = {}  # a chunk's t_start -> (handed over at, compiled)
    about: dict[str, str] = {}  # the model's device and dtype, read once

    def handed_over(report) -> None:  # in the worker's thread, before the next chunk can start
        engine = worker.engine
        ran[report.t_start] = (time.time(), bool(engine is not None and engine.model.compiled))

    class Receiver(QObject):
        @Slot(object, str)
        def phase(self, phase, detail: str) -> None:
            timeline.record("phase", phase=phase.value, detail=detail)

        @Slot(object)
        def report(self, report) -> None:
            handed, compiled = ran.pop(report.t_start, (None, False))
            model = worker.engine.model if worker.engine is not None else None  # None: a remote server's
            warmup = model.warmup if model is not None else None
            if model is not None and not about:
                about.update(device=device_name(model.device), dtype=str(model.dtype))
            timeline.record(
                "chunk",
                t_start=report.t_start,
                t_end=report.t_end,
                ran=handed,
                latency=report.latency,
                text=" ".join(line.text for line in report.commentary),
                skipped=report.skipped,
                compiled=compiled,
                device=about.get("device"),
                dtype=about.get("dtype"),
                compile_thread_s=round(warmup.seconds, 3)
                if warmup is not None and warmup.finished.is_set()
                else None,
            )

        @Slot(str, str)
        def failed(self, reason: str, details: str) -> None:
            timeline.record("failed", reason=reason)

        @Slot()
        def finished(self) -> None:
            timeline.record("finished")

    receiver = Receiver()
    worker.report.connect(handed_over, Qt.ConnectionType.DirectConnection)
    worker.phase.connect(receiver.phase)
    worker.report.connect(receiver.report)
    worker.failed.connect(receiver.failed)
    worker.finished.connect(receiver.finished)
    return receiver
