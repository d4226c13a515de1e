"""Wall-clock laps of the engine's phases, in milliseconds, synchronised with the device."""

from __future__ import annotations

import time

import torch


class Stopwatch:
    """Wall-clock laps, synchronised with the device so GPU work is counted where it happens."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.last = self._now()

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def lap(self) -> float:
        now = self._now()
        elapsed, self.last = (now - self.last) * 1000.0, now
        return elapsed
