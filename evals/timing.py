"""Timing one piece of device work: median milliseconds over repeats after warm-up.

On a GPU the time comes from CUDA events around the work (device time, not host time);
on a CPU from the wall clock.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_ms(
    fn: Callable[[], object], device: torch.device | str = "cuda", repeats: int = 20, warmup: int = 3
) -> float:
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)
