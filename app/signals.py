"""SIGINT and SIGTERM to the app (`python -m app`): the run in progress stops as Stop stops it, then the
window closes and the process exits with 128 + the signal, as `python -m core run` and `serve` do.

The rule is core's, not a copy: `core.__main__.StopSignals` says one line on the first signal and calls
back; a second signal quits at once (os._exit, 128 + the signal) without the clean-up, which may be what
hangs. What the app adds is Qt's part. Python runs a signal's handler in the main thread only when the
interpreter next runs bytecode, and Qt's event loop waits in C, so a signal to an idle window would wait
for the next mouse move. `signal.set_wakeup_fd` makes the C-level handler write to a socket that a
QSocketNotifier watches: its slot is Python code, so the handler runs at once.

The first signal does Stop (the worker stops the pipeline after the chunk in progress, closes the
recorder, so the MP4 plays to its end and the .srt beside it holds every cue so far, and closes a
remote session as Stop does), waits for the run's thread to end, then closes the window (its settings
are saved as on Quit) and leaves the event loop. The work is queued on the event loop, never done in
the handler, which may have interrupted any slot of the window.
"""

from __future__ import annotations

import signal
import socket
import sys

from PySide6.QtCore import QObject, QSocketNotifier, QTimer, Slot
from PySide6.QtWidgets import QApplication

from core.__main__ import StopSignals

POLL_MS = 50  # how often the run's end is looked for once a signal asked it to stop


class AppStopSignals(QObject):
    """Installed around `app.exec()` (a context manager, in the main thread); `window` is set once it
    exists (a signal that comes first is acted on when the event loop starts). `exit_code(code)` is
    what `python -m app` returns: 128 + the signal if one stopped it, else the event loop's code."""

    def __init__(self, app: QApplication) -> None:
        super().__init__()
        self.app = app
        self.window = None  # app.window.MainWindow, once built
        self.signals = StopSignals(self._first, "stopping the run, closing the recording and its subtitles")
        self._timer: QTimer | None = None
        self._reader, self._writer = socket.socketpair()
        for end in (self._reader, self._writer):
            end.setblocking(False)  # set_wakeup_fd needs it; a full buffer never blocks the handler
        self._notifier = QSocketNotifier(self._reader.fileno(), QSocketNotifier.Type.Read, self)
        self._notifier.activated.connect(self._wake)
        self._previous_fd = -1

    @property
    def signum(self) -> int | None:
        """The signal that stopped the app, or None."""
        return self.signals.signum

    def __enter__(self) -> AppStopSignals:
        self.signals.__enter__()
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        self.signals.__exit__(*exc)
        self._notifier.setEnabled(False)
        self._reader.close()
        self._writer.close()

    def exit_code(self, code: int) -> int:
        return code if self.signum is None else 128 + self.signum

    @Slot()
    def _wake(self) -> None:
        """The notifier: Python runs here, and with it the signal's handler; the bytes are only a wake-up."""
        try:
            while self._reader.recv(64):
                pass
        except BlockingIOError:
            pass

    def _first(self, signum: int) -> None:
        """The handler's call-back (main thread, inside whatever was running): queue the stop."""
        QTimer.singleShot(0, self._stop_run)

    def _stop_run(self) -> None:
        window = self.window
        if window is not None:
            window.stop()  # what Stop does; the run ends after the chunk in progress
        self._timer = QTimer(self)
        self._timer.timeout.connect(self._close_when_stopped)
        self._timer.start(POLL_MS)
        self._close_when_stopped()

    def _close_when_stopped(self) -> None:
        window = self.window
        if window is not None and window.thread is not None:
            return  # the worker is still closing its outputs
        self._timer.stop()
        name = signal.Signals(self.signum).name
        print(
            f"stopped on {name}; the recording and the subtitles written so far are complete", file=sys.stderr
        )
        if window is not None:
            window.close()
        self.app.quit()
