"""Slowing down token guessing: each wrong token from one address waits longer before it is refused.

The server asks `TokenGuard.refuse(host)` before it closes a connection whose hello had a missing or
wrong token. The wait doubles with each failure from that host within a burst (`base`, 2x`base`, ...,
at most `cap` seconds), and failures from one host queue behind each other, so opening many
connections at once does not guess faster: a host gets at most one refusal every `cap` seconds once
its burst has grown. A burst ends `quiet` seconds after the host's last failure; it is logged twice,
when it starts (a warning) and when it ends (how many, over how long; noticed at the next wrong token
from any host), never once per attempt. The
table of hosts is bounded (`max_hosts`, the oldest burst forgotten first), so a flood from many
addresses costs bounded memory.

`ConnectionLimits` caps the connections the server holds open (in all, and per address those that have
not had a hello accepted: idle ones, wrong tokens waiting for their refusal), and `BurstLog` logs the
refusals beyond them, and failed accepts, as bursts the same way: one warning when one starts, its count
when it ends, never one line per connection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Burst:
    started: float
    failures: int = 0
    free_at: float = 0.0  # when this host's next refusal may go out (monotonic seconds)
    last: float = 0.0


class TokenGuard:
    def __init__(
        self, *, base: float = 0.25, cap: float = 8.0, quiet: float = 60.0, max_hosts: int = 4096
    ) -> None:
        self.base, self.cap, self.quiet, self.max_hosts = base, cap, quiet, max_hosts
        self._bursts: OrderedDict[str, _Burst] = OrderedDict()

    def delay(self, host: str) -> float:
        """Record one wrong token from `host`; the seconds its refusal is to wait."""
        now = time.monotonic()
        self._forget_quiet(now)
        burst = self._bursts.get(host)
        if burst is None:
            if len(self._bursts) >= self.max_hosts:
                self._end(*self._bursts.popitem(last=False))
            burst = self._bursts[host] = _Burst(started=now, free_at=now)
            log.warning(
                "wrong or missing token from %s; its further attempts are refused ever more slowly "
                "(up to %g s each)",
                host,
                self.cap,
            )
        self._bursts.move_to_end(host)
        burst.failures += 1
        burst.last = now
        step = min(self.cap, self.base * 2.0 ** min(burst.failures - 1, 64))
        # Queued behind the host's earlier refusals, but never more than `cap` from now.
        burst.free_at = min(max(now, burst.free_at) + step, now + self.cap)
        return burst.free_at - now

    async def refuse(self, host: str, closed: Awaitable[object] | None = None) -> None:
        """Wait before refusing a wrong token from `host` (the caller then closes the connection), or
        until `closed` completes (the connection went: a client that gave up, a server shutting down),
        so no one waits on a refusal that can no longer be delivered."""
        wait = asyncio.ensure_future(asyncio.sleep(self.delay(host)))
        ended = asyncio.ensure_future(closed) if closed is not None else None
        try:
            await asyncio.wait([wait] + ([ended] if ended else []), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (wait, ended):
                if task is not None:
                    task.cancel()

    def failures(self, host: str) -> int:
        """Wrong tokens from `host` in its current burst (0: none in the last `quiet` seconds)."""
        self._forget_quiet(time.monotonic())
        burst = self._bursts.get(host)
        return burst.failures if burst else 0

    def _forget_quiet(self, now: float) -> None:
        # Oldest last failure first (move_to_end on each), so the scan stops at the first live burst.
        while self._bursts:
            host, burst = next(iter(self._bursts.items()))
            if now - burst.last < self.quiet:
                return
            del self._bursts[host]
            self._end(host, burst)

    @staticmethod
    def _end(host: str, burst: _Burst) -> None:
        log.info(
            "%d wrong or missing token(s) from %s over %.0f s",
            burst.failures,
            host,
            burst.last - burst.started,
        )


class BurstLog:
    """Events of one kind (refused connections, failed accepts) logged as `TokenGuard` logs wrong tokens:
    a warning when a burst from one key (an address) starts, and, for a burst of more than one, a line
    with its count when it ends (`quiet` seconds after its last event; noticed at the next event of any
    key), never one line per event. The table of keys is bounded (`max_keys`, the oldest burst ended first)."""

    def __init__(self, what: str, *, quiet: float = 60.0, max_keys: int = 4096) -> None:
        self.what, self.quiet, self.max_keys = what, quiet, max_keys
        self._bursts: OrderedDict[str, _Burst] = OrderedDict()

    def note(self, key: str, detail: str) -> None:
        """One event from `key`; `detail` (why) is logged if it starts a burst."""
        now = time.monotonic()
        while self._bursts:  # oldest last event first (move_to_end below)
            oldest, burst = next(iter(self._bursts.items()))
            if now - burst.last < self.quiet:
                break
            del self._bursts[oldest]
            self._end(oldest, burst)
        burst = self._bursts.get(key)
        if burst is None:
            if len(self._bursts) >= self.max_keys:
                self._end(*self._bursts.popitem(last=False))
            burst = self._bursts[key] = _Burst(started=now)
            log.warning(
                "%s (%s): %s; more are counted, not logged, until %g s pass without one",
                self.what,
                key,
                detail,
                self.quiet,
            )
        self._bursts.move_to_end(key)
        burst.failures += 1
        burst.last = now

    def count(self, key: str) -> int:
        """Events from `key` in its current burst (0: none in the last `quiet` seconds)."""
        burst = self._bursts.get(key)
        return burst.failures if burst and time.monotonic() - burst.last < self.quiet else 0

    def _end(self, key: str, burst: _Burst) -> None:
        if burst.failures > 1:
            log.info("%s (%s): %d over %.0f s", self.what, key, burst.failures, burst.last - burst.started)


@dataclasses.dataclass
class Admission:
    """One connection counted by `ConnectionLimits`: `greeted()` once its hello is accepted, `close()`
    when it ends (both safe to call again)."""

    limits: ConnectionLimits
    host: str
    pending: bool = True
    open: bool = True

    def greeted(self) -> None:
        if self.pending:
            self.pending = False
            self.limits._unpend(self.host)

    def close(self) -> None:
        self.greeted()
        if self.open:
            self.open = False
            self.limits.open -= 1


class ConnectionLimits:
    """How many connections the server holds: `total` open in all, and per address `pending` that have
    not had a hello accepted yet (idle ones, ones whose wrong token is being refused slowly). Each costs
    a file descriptor and its buffers until it ends; without a cap, idle connections took every
    descriptor. The table of addresses holds only those with a pending connection."""

    def __init__(self, total: int, pending: int) -> None:
        if total < 1 or pending < 1:
            raise ValueError(f"connection limits must be at least 1 (got {total} in all, {pending} pending)")
        self.total, self.pending = total, pending
        self.open = 0
        self._pending: dict[str, int] = {}

    def admit(self, host: str) -> Admission | str:
        """The connection counted (an `Admission`), or why it is refused (a reason for its close)."""
        if self.open >= self.total:
            return f"the server holds {self.open} connections, its limit; try again later"
        if self._pending.get(host, 0) >= self.pending:
            return (
                f"{self.pending} connections from {host} have not sent a valid hello yet, the limit per "
                "address; try again later"
            )
        self.open += 1
        self._pending[host] = self._pending.get(host, 0) + 1
        return Admission(self, host)

    def pending_from(self, host: str) -> int:
        return self._pending.get(host, 0)

    def _unpend(self, host: str) -> None:
        left = self._pending.get(host, 0) - 1
        if left > 0:
            self._pending[host] = left
        else:
            self._pending.pop(host, None)
