"""Reconnecting to a live source: exponential backoff with a cap, and the state a user sees.

A live source (RTSP stream, camera) that stalls or drops is opened again after 0.5 s, 1 s,
2 s, ... up to `cap` seconds between tries, until it answers or `give_up_after` seconds have
passed since it was lost; every change of state goes to a callback (the GUI shows it, the CLI
logs it). The first connection is not retried: a wrong URL or camera index should fail at
once with its reason, not after a minute of backoff.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from core.errors import SourceError

log = logging.getLogger(__name__)
T = TypeVar("T")


class SourceState(enum.Enum):
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    FAILED = "failed"


StateCallback = Callable[[SourceState, str], None]  # (state, one line for a person)


@dataclass(frozen=True)
class Backoff:
    """Delays between reconnection attempts: `initial` * `factor`**n seconds, at most `cap`."""

    initial: float = 0.5
    factor: float = 2.0
    cap: float = 8.0
    give_up_after: float = 120.0  # seconds since the source was lost

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.cap and self.factor >= 1 and self.give_up_after >= 0):
            raise ValueError(
                f"invalid backoff {self}: need 0 < initial <= cap, factor >= 1, give_up_after >= 0"
            )

    def delay(self, attempt: int) -> float:
        return min(self.cap, self.initial * self.factor**attempt)


class Reconnector:
    """Reopens a lost source with backoff, reporting state changes; stops early when `stop` is set."""

    def __init__(
        self, name: str, backoff: Backoff, on_state: StateCallback | None, stop: threading.Event
    ) -> None:
        self.name, self.backoff, self.stop = name, backoff, stop
        self.on_state = on_state
        self.state: SourceState | None = None

    def report(self, state: SourceState, message: str) -> None:
        if state is not self.state:
            self.state = state
            (log.warning if state is not SourceState.CONNECTED else log.info)("%s: %s", self.name, message)
        if self.on_state is not None:
            self.on_state(state, message)

    def reopen(
        self,
        open_once: Callable[[], T],
        reason: str,
        retry_on: tuple[type[Exception], ...] = (SourceError,),
        give_up: type[Exception] = SourceError,
        since: float | None = None,
    ) -> T | None:
        """Call `open_once` until it succeeds; None if stopped.

        Failures of the `retry_on` kinds are retried; once it gives up it raises `give_up`. `since`
        (monotonic; default now) is when the source last worked: the give-up time counts from it, so a
        source that connects again and again but never delivers (core/media/watchdog.py) still gives up.
        """
        lost = time.monotonic() if since is None else min(since, time.monotonic())
        attempt = 0
        while not self.stop.is_set():
            if (attempt or since is not None) and time.monotonic() - lost >= self.backoff.give_up_after:
                message = (
                    f"{self.name} could not be reached again for {self.backoff.give_up_after:.0f} s "
                    f"({reason}); check that it is on and reachable"
                )
                self.report(SourceState.FAILED, message)
                raise give_up(message)
            delay = self.backoff.delay(attempt)
            self.report(
                SourceState.RECONNECTING,
                f"lost ({reason}); reconnecting in {delay:.1f} s (attempt {attempt + 1})",
            )
            if self.stop.wait(delay):
                return None
            try:
                opened = open_once()
            except retry_on as exc:
                reason = str(exc)
            else:
                self.report(SourceState.CONNECTED, f"reconnected after {time.monotonic() - lost:.1f} s")
                return opened
            attempt += 1
        return None
