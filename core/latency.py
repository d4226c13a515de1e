"""The late-chunk policy: whether a chunk that has waited is still worth commentary.

One rule for the real-time runner (core/media/realtime.py, a live source feeding one session) and
the server (core/remote/server.py, chunks of many sessions taking turns on one model). A chunk is
processed when its wait so far plus the predicted time of one chunk fits the latency budget. The
prediction errs long: the slowest of the recent chunks, plus 10%, so a chunk predicted to fit does
not overrun the budget by a little jitter. A model slower than the budget itself would miss it on
every chunk; then the newest chunk is still processed (commentary about one chunk-time late, with
one warning) rather than none.
"""

from __future__ import annotations

import logging
from collections import deque

log = logging.getLogger(__name__)

RECENT_CHUNKS = 8  # how many chunk times the prediction looks back on
MARGIN = 1.1  # the prediction's spare time over the slowest recent chunk


class LatencyBudget:
    """Decides, chunk by chunk, whether to process or skip; learns from the chunks it lets through."""

    def __init__(self, budget: float) -> None:
        if not budget > 0:
            raise ValueError(f"the latency budget must be positive (got {budget})")
        self.budget = budget
        self._recent: deque[float] = deque(maxlen=RECENT_CHUNKS)
        self._warned = False

    @property
    def seconds_per_chunk(self) -> float:
        """What the next chunk is expected to take (0 before any chunk ran)."""
        return MARGIN * max(self._recent) if self._recent else 0.0

    def allows(self, waited: float, newest: bool) -> bool:
        """Whether a chunk that has waited `waited` seconds is processed. `newest`: no newer chunk of the
        same stream is waiting behind it, so skipping it would leave nothing better to comment on."""
        predicted = self.seconds_per_chunk
        if waited + predicted <= self.budget:
            return True
        if predicted <= self.budget or not newest:
            return False
        if not self._warned:
            self._warned = True
            log.warning(
                "a chunk takes about %.1f s, more than the %.1f s latency budget: commenting on the newest "
                "chunk each time, about %.1f s late; raise the latency budget or use a faster device",
                predicted,
                self.budget,
                predicted + waited,
            )
        return True

    def record(self, took: float) -> None:
        """A processed chunk took `took` seconds."""
        self._recent.append(took)
