"""Memory is constant: 10,000 chunks through a Session with the default (published) policy.

Replies are forced to one word (stop and marker suppressed) and stream time starts at 10,000 s
so every time label has as many digits at chunk 100 as at chunk 10,000: then the cache must hold
exactly the same number of tokens at both points, positions must stay in a fixed range, and the
process must not grow.
"""

from __future__ import annotations

import gc

import numpy as np
import psutil
import pytest
import torch

from core.config import CachePolicy, GenerationConfig, StreamConfig
from core.conversation import Part
from core.engine import StreamingEngine

CHUNKS = 10_000
START = 10_000.0


@pytest.mark.slow
def test_ten_thousand_chunks_keep_the_cache_and_positions_constant(tiny_model):
    policy = CachePolicy()  # published defaults: sink 512, window 512, 16 vision chunks, 16 replies
    generation = GenerationConfig(max_new_tokens=1, min_new_tokens=1, suppress=(" ...",), seed=0)
    stream = StreamConfig(min_pixels=4 * 28 * 28, max_pixels=4 * 28 * 28)  # 56x56: 4 vision tokens
    engine = StreamingEngine(tiny_model, stream=stream, cache=policy, generation=generation)
    previous = " ".join(f"word{i}" for i in range(1500))  # longer than sink + window: full from the start
    session = engine.start(previous_text=previous)
    frames = [np.full((56, 56, 3), v, np.uint8) for v in (60, 200)]
    process = psutil.Process()
    marks = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    try:
        for k in range(CHUNKS):
            session.push(frames, START + k, START + k + 1)
            if k + 1 in (100, 1_000, CHUNKS):
                gc.collect()
                stats = session.last_stats
                marks[k + 1] = (
                    stats.cached_tokens,
                    stats.max_position,
                    session.cache.capacity,
                    process.memory_info().rss,
                )
    finally:
        torch.set_num_threads(threads)

    tokens_100, position_100, capacity_100, rss_100 = marks[100]
    tokens_end, position_end, capacity_end, rss_end = marks[CHUNKS]
    assert tokens_end == tokens_100 == marks[1_000][0]
    assert position_end == position_100
    assert capacity_end == capacity_100  # the buffers never grew after warm-up
    counts = session.cache.counts()
    assert counts[Part.PREV_CONTENT] == policy.sink_tokens + policy.text_window_tokens
    assert sum(s.part is Part.VISION for s in session.cache.spans) == policy.vision_window_chunks
    assert len({s.round for s in session.cache.spans if s.round >= 0}) == policy.text_window_replies
    # Positions: the whole kept conversation fits in a fixed span (about 2.1k at HD in the paper).
    assert position_end <= tokens_end < 2_500
    assert rss_end - rss_100 < 64 * 2**20, f"process grew by {(rss_end - rss_100) / 2**20:.1f} MiB"
