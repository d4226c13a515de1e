"""Chunking: sampled frames grouped into the fixed-length chunks the model sees one at a time.

Chunk k covers stream time [k * chunk_seconds, (k + 1) * chunk_seconds) and always holds
`frames_per_chunk` frames, one per slot at k * chunk_seconds + j / fps. Timestamps decide
membership, not arrival order, so a source that dropped frames still yields correctly timed
chunks: each slot shows the frame on screen at its time, and a slot before the chunk's first
frame shows that first frame. A trailing chunk (the end of a file) is therefore padded with its
last frame. A span with no frames at all yields no chunk; the chunk after it keeps its own times.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from core.config import StreamConfig
from core.types import Frame

_EPS = 1e-6  # seconds; a frame stamped 0.9999999 belongs at 1.0, not in the chunk before


@dataclass(frozen=True)
class Chunk:
    """`frames_per_chunk` RGB frames (uint8 [H, W, 3], sizes may differ) for [t_start, t_end)."""

    frames: list[np.ndarray]
    t_start: float
    t_end: float


def chunks(frames: Iterable[Frame], stream: StreamConfig) -> Iterator[Chunk]:
    """Group time-stamped frames into chunks of `stream.chunk_seconds`; frame times must not decrease."""
    index: int | None = None  # chunk the pending frames belong to
    done: int | None = None  # the chunk already yielded, whose late frames are dropped
    pending: list[Frame] = []
    last_t = -math.inf
    last_slot = (stream.frames_per_chunk - 1) / stream.fps  # seconds after a chunk's start
    for frame in frames:
        if frame.t < last_t - _EPS:
            raise ValueError(
                f"frame times must not decrease (got t={frame.t} after t={last_t}); this is a source bug"
            )
        last_t = frame.t
        k = math.floor(frame.t / stream.chunk_seconds + _EPS)
        if k == done:
            continue
        if index is not None and k != index and pending:
            yield _fill(index, pending, stream)
            pending = []
        index = k
        pending.append(frame)
        if frame.t >= k * stream.chunk_seconds + last_slot - _EPS:
            yield _fill(index, pending, stream)
            pending, done = [], k
    if pending:
        yield _fill(index, pending, stream)


def _fill(index: int, frames: list[Frame], stream: StreamConfig) -> Chunk:
    """One frame per slot: the latest frame at or before the slot's time, else the chunk's first."""
    t_start = index * stream.chunk_seconds
    picked = []
    i = 0
    for j in range(stream.frames_per_chunk):
        slot = t_start + j / stream.fps
        while i + 1 < len(frames) and frames[i + 1].t <= slot + _EPS:
            i += 1
        picked.append(frames[i].rgb)
    return Chunk(frames=picked, t_start=round(t_start, 6), t_end=round(t_start + stream.chunk_seconds, 6))
