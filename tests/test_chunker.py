"""Chunking: which frames land in which chunk, padding, gaps and time bounds.

Each test frame is a 2x2 image filled with its own id, so a chunk reads back as a list of ids.
"""

from __future__ import annotations

import numpy as np
import pytest

from core.config import StreamConfig
from core.media.chunker import Chunk, chunks
from core.types import Frame


def frames_at(times: list[float], size: int = 2) -> list[Frame]:
    return [Frame(np.full((size, size, 3), i, np.uint8), t) for i, t in enumerate(times)]


def read(chunk: Chunk) -> tuple[float, float, list[int]]:
    return chunk.t_start, chunk.t_end, [int(f[0, 0, 0]) for f in chunk.frames]


DEFAULT = StreamConfig()  # 2 fps, 1-second chunks: two frames per chunk


@pytest.mark.parametrize(
    "stream, times, expected",
    [
        pytest.param(DEFAULT, [0.0, 0.5, 1.0, 1.5], [(0.0, 1.0, [0, 1]), (1.0, 2.0, [2, 3])], id="exact"),
        pytest.param(DEFAULT, [0.0, 0.5, 1.0], [(0.0, 1.0, [0, 1]), (1.0, 2.0, [2, 2])], id="last-padded"),
        pytest.param(
            DEFAULT, [0.0, 0.5, 3.0, 3.5], [(0.0, 1.0, [0, 1]), (3.0, 4.0, [2, 3])], id="gap-skipped"
        ),
        pytest.param(DEFAULT, [0.0, 1.5], [(0.0, 1.0, [0, 0]), (1.0, 2.0, [1, 1])], id="late-first-frame"),
        pytest.param(
            DEFAULT,
            [0.0, 0.5, 1.5, 2.0],
            [(0, 1, [0, 1]), (1, 2, [2, 2]), (2, 3, [3, 3])],
            id="dropped-frame",
        ),
        pytest.param(
            DEFAULT,
            [0.0, 0.4999999, 0.9999999, 1.5],
            [(0.0, 1.0, [0, 1]), (1.0, 2.0, [2, 3])],
            id="float-noise",
        ),
        pytest.param(DEFAULT, [i / 10 for i in range(10)], [(0.0, 1.0, [0, 5])], id="faster-source"),
        pytest.param(
            StreamConfig(fps=4.0, chunk_seconds=1.0),
            [i / 4 for i in range(6)],
            [(0.0, 1.0, [0, 1, 2, 3]), (1.0, 2.0, [4, 5, 5, 5])],
            id="four-per-chunk",
        ),
        pytest.param(
            StreamConfig(fps=10.0, chunk_seconds=0.1),
            [0.0, 0.1, 0.2, 0.3],  # 3 * 0.1 is 0.30000000000000004 in floats
            [(0.0, 0.1, [0]), (0.1, 0.2, [1]), (0.2, 0.3, [2]), (0.3, 0.4, [3])],
            id="rounded-bounds",
        ),
        pytest.param(DEFAULT, [], [], id="empty"),
    ],
)
def test_chunk_grouping(stream, times, expected):
    got = [read(c) for c in chunks(frames_at(times), stream)]
    assert got == expected
    assert all(len(ids) == stream.frames_per_chunk for _, _, ids in got)


def test_chunks_are_lazy_and_yield_as_soon_as_a_chunk_is_complete():
    pulled = []

    def source():
        for frame in frames_at([0.0, 0.5, 1.0, 1.5]):
            pulled.append(frame.t)
            yield frame

    stream = chunks(source(), StreamConfig())
    first = next(stream)
    assert read(first) == (0.0, 1.0, [0, 1])
    assert pulled == [0.0, 0.5]  # the frame for its last slot completes it: no wait for the next chunk


def test_frames_after_the_last_slot_change_nothing():
    """At 30 FPS a chunk is complete at its 0.5 s frame; the frames up to 1.0 s are not needed."""
    times = [i / 30 for i in range(75)]
    got = [read(c) for c in chunks(frames_at(times), StreamConfig())]
    assert got == [(0.0, 1.0, [0, 15]), (1.0, 2.0, [30, 45]), (2.0, 3.0, [60, 74])]


def test_frames_of_different_sizes_are_kept_as_they_are():
    frames = [Frame(np.zeros((4, 6, 3), np.uint8), 0.0), Frame(np.zeros((8, 2, 3), np.uint8), 0.5)]
    (chunk,) = chunks(frames, StreamConfig())
    assert [f.shape for f in chunk.frames] == [(4, 6, 3), (8, 2, 3)]
    assert chunk.frames[0] is frames[0].rgb  # no copies


def test_decreasing_times_are_refused():
    with pytest.raises(ValueError, match="must not decrease"):
        list(chunks(frames_at([0.0, 1.0, 0.5]), StreamConfig()))


def test_chunk_is_frozen():
    (chunk,) = chunks(frames_at([0.0]), StreamConfig())
    with pytest.raises(AttributeError):
        chunk.t_start = 5.0
