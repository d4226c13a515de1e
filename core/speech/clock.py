"""The stream's clock: what stream second it is now, for placing speech where the picture is."""

from __future__ import annotations

import threading
import time


class StreamClock:
    """Stream seconds on the monotonic clock, set by the first frame seen (`see(frame.t)` as it
    arrives). In a live run (a live source, or a file paced at real time) stream time and wall time
    advance together, so one offset is the whole mapping."""

    def __init__(self) -> None:
        self._offset: float | None = None
        self._lock = threading.Lock()

    def see(self, t: float) -> None:
        """A frame of stream time `t` has just arrived (only the first one sets the clock)."""
        if self._offset is None:
            with self._lock:
                if self._offset is None:
                    self._offset = time.monotonic() - t

    def now(self) -> float | None:
        """The stream time now, or None before the first frame."""
        return None if self._offset is None else time.monotonic() - self._offset
