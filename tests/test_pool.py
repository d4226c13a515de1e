"""The cache pool (core/pool.py): session caches preallocated in slots, handed out and given back."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import SMALL_STREAM, random_frames
from core.config import CachePolicy, EvictionMode, GenerationConfig
from core.engine import StreamingEngine
from core.pool import CachePool, CapacityError, slot_tokens

GREEDY = GenerationConfig(temperature=0.0, max_new_tokens=6, repetition_penalty=1.0)
POLICY = CachePolicy(sink_tokens=8, text_window_tokens=12, vision_window_chunks=3, text_window_replies=4)
PREVIOUS = "Blue against red, second half, a long and eventful afternoon at the stadium."


def stream(session, rng, chunks: int, sizes=((56, 84), (112, 112), (84, 56))) -> list[str]:
    lines = []
    for k in range(chunks):
        lines += [c.text for c in session.push(random_frames(rng, *sizes[k % len(sizes)]), k, k + 1)]
    return lines


def test_a_pooled_session_gives_the_tokens_of_a_session_with_its_own_cache(tiny_model):
    alone = StreamingEngine(tiny_model, stream=SMALL_STREAM, cache=POLICY, generation=GREEDY)
    pooled = StreamingEngine(tiny_model, stream=SMALL_STREAM, cache=POLICY, generation=GREEDY, sessions=2)
    with alone.start(previous_text=PREVIOUS) as a, pooled.start(previous_text=PREVIOUS) as b:
        assert stream(a, np.random.default_rng(3), 14) == stream(b, np.random.default_rng(3), 14)
        assert a.cache.token_ids() == b.cache.token_ids()
        # The pooled cache never grew: its buffers are the pool's memory, at the slot's size.
        assert b.cache.capacity == pooled.pool.tokens and b.cache.key_buffer.data_ptr() in {
            pooled.pool.keys[s].data_ptr() for s in range(2)
        }


def test_interleaved_sessions_in_one_pool_do_not_touch_each_others_slots(tiny_model):
    """Two sessions pushed in turn give what each gives alone (a shared slot would mix their caches)."""
    engine = StreamingEngine(tiny_model, stream=SMALL_STREAM, cache=POLICY, generation=GREEDY, sessions=2)
    with engine.start(previous_text=PREVIOUS) as solo:
        expected_one = stream(solo, np.random.default_rng(1), 8)
    with engine.start(previous_text="Another match.") as solo:
        expected_two = stream(solo, np.random.default_rng(2), 8)
    one, two = engine.start(previous_text=PREVIOUS), engine.start(previous_text="Another match.")
    rng_one, rng_two = np.random.default_rng(1), np.random.default_rng(2)
    got_one, got_two = [], []
    for k in range(8):
        size = ((56, 84), (112, 112), (84, 56))[k % 3]
        got_one += [c.text for c in one.push(random_frames(rng_one, *size), k, k + 1)]
        got_two += [c.text for c in two.push(random_frames(rng_two, *size), k, k + 1)]
    one.close(), two.close()
    assert (got_one, got_two) == (expected_one, expected_two)


def test_a_full_pool_refuses_with_the_reason_and_a_closed_session_frees_its_slot(tiny_model):
    engine = StreamingEngine(tiny_model, stream=SMALL_STREAM, cache=POLICY, generation=GREEDY, sessions=2)
    first, second = engine.start(), engine.start()
    with pytest.raises(CapacityError, match="all 2 cache slots are in use"):
        engine.start()
    second.close()
    second.close()  # twice is harmless, and gives nothing back twice
    assert engine.pool.in_use == 1
    with engine.start() as third:
        assert third._slot is not None and engine.pool.in_use == 2
    first.close()
    assert engine.pool.in_use == 0


def test_a_session_that_cannot_open_gives_its_slot_back(tiny_model):
    engine = StreamingEngine(tiny_model, stream=SMALL_STREAM, cache=POLICY, generation=GREEDY, sessions=1)
    for _ in range(3):
        with pytest.raises((ValueError, OverflowError, RuntimeError)):
            engine.start(seed=2**80)  # refused by the sampler's generator
    assert engine.pool.in_use == 0
    engine.start().close()


def test_the_slot_bound_holds_for_the_largest_frames_and_longest_replies(tiny_model):
    """A stream of the largest frames the stream config allows and replies of max_new_tokens, past
    every window: the cache never needs more than the slot (it would raise CacheFullError)."""
    hot = GenerationConfig(temperature=1.0, max_new_tokens=12, min_new_tokens=12, seed=0)
    engine = StreamingEngine(tiny_model, stream=SMALL_STREAM, cache=POLICY, generation=hot, sessions=1)
    rng = np.random.default_rng(0)
    with engine.start(previous_text=PREVIOUS * 20) as session:
        for k in range(POLICY.vision_window_chunks + POLICY.text_window_replies + 6):
            session.push(random_frames(rng, 224, 224), k, k + 1)  # resized down to max_pixels
            assert session.cache.reserved <= engine.pool.tokens
    tokens = slot_tokens(tiny_model.spec, POLICY, SMALL_STREAM, hot)
    assert tokens == engine.pool.tokens and tokens % 256 == 0


def test_a_cache_that_never_evicts_cannot_be_pooled(tiny_model):
    with pytest.raises(Exception, match="cannot be given a fixed slot"):
        StreamingEngine(
            tiny_model, stream=SMALL_STREAM, cache=CachePolicy(mode=EvictionMode.NONE), sessions=2
        )


def test_auto_sizes_the_pool_from_free_memory(tiny_model):
    engine = StreamingEngine(tiny_model, stream=SMALL_STREAM, cache=POLICY, sessions="auto")
    assert 1 <= engine.pool.slots <= 8  # a CPU: a handful of streams at most
    assert isinstance(engine.pool, CachePool)
