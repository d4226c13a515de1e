"""Cache bookkeeping on tiny shapes whose contents are readable token tags (no model involved).

Each token's value vector holds its tag, so after an eviction the buffers must read, slot by slot,
exactly the tags the policy keeps, in conversation order. Each token's key is the unit vector
rotated to its position, so after the delta rotation every key must equal the key a fresh
layout of the kept spans would give it.
"""

from __future__ import annotations

import pytest
import torch

from core.cache import StreamCache, _cut_middle
from core.config import CachePolicy, EvictionMode
from core.conversation import Part, Piece

GRID = (1, 2, 2)  # 4 vision tokens per chunk, extent 2
INV_FREQ = torch.tensor([0.37])  # head_dim 2: one rotary pair

PREFIX = [Piece(Part.SYSTEM, (1, 2, 3)), Piece(Part.PREV_OPEN, (4,))]
CONTENT = (5, 6, 7, 8, 9)
CLOSE = Piece(Part.PREV_CLOSE, (98, 99))
ALL = set(Part)


def round_pieces(r: int) -> dict[Part, tuple[int, ...]]:
    """Round r's tokens, tagged (r+1)*100 + k so every tag says where it came from."""
    b = (r + 1) * 100
    return {
        Part.TURN_OPEN: (b + 1,),
        Part.TIME_LABEL: (b + 2, b + 3),
        Part.VISION: tuple(range(b + 10, b + 16)),  # start, 4 pads, end
        Part.PROMPT_CLOSE: (b + 30, b + 31),
        Part.ASSISTANT_OPEN: (b + 40,),
        Part.REPLY: (b + 50, b + 51),
        Part.REPLY_CLOSE: (b + 70, b + 71),
    }


def new_cache(policy: CachePolicy, capacity: int = 16) -> StreamCache:
    return StreamCache(
        num_layers=2,
        num_kv_heads=1,
        head_dim=2,
        dtype=torch.float64,
        device=torch.device("cpu"),
        inv_freq=INV_FREQ,
        policy=policy,
        capacity=capacity,
    )


def feed(cache: StreamCache, pieces: list[Piece], round: int) -> None:
    """What a forward does to the cache: one key and value per token (value = tag, key at its position)."""
    for piece in pieces:
        positions = cache.reserve([piece], round, grid=GRID if piece.part is Part.VISION else None, dt=2.0)
        angle = positions[0].double() * INV_FREQ.double()
        keys = torch.stack([angle.cos(), angle.sin()], dim=-1)[None, None]  # [1, 1, n, 2]
        values = torch.tensor(piece.ids, dtype=torch.float64)[:, None].expand(-1, 2)[None, None]
        for i, layer in enumerate(cache.layers):
            layer.update(keys, values + 1000 * i)


def stream(policy: CachePolicy, rounds: int, content=CONTENT) -> StreamCache:
    cache = new_cache(policy)
    feed(cache, PREFIX + ([Piece(Part.PREV_CONTENT, content)] if content else []) + [CLOSE], -1)
    for r in range(rounds):
        cache.evict(r)
        pieces = round_pieces(r)
        feed(cache, [Piece(p, ids) for p, ids in pieces.items()], r)
    cache.evict(rounds)
    return cache


def expected(content: list[int], rounds: dict[int, set[Part]]) -> list[int]:
    out = [1, 2, 3, 4, *content, 98, 99]
    for r, parts in sorted(rounds.items()):
        out += [i for part, ids in round_pieces(r).items() if part in parts for i in ids]
    return out


FRAME = {Part.TURN_OPEN, Part.VISION, Part.PROMPT_CLOSE}
TEXT_ONLY = ALL - {Part.VISION}
# `stream` evicts before round R = rounds, as the engine does before adding a chunk: a window of
# W keeps rounds > R - W, that is the last W - 1 existing rounds plus the round about to come.
CASES = {
    # equal windows: whole rounds leave; replies 0-2 retire, the content keeps 2 + the last 3
    "equal windows": (
        dict(vision_window_chunks=2, text_window_replies=2, sink_tokens=2, text_window_tokens=3),
        4,
        expected([5, 6, 251, 350, 351], {3: ALL}),
    ),
    "vision outlives text": (
        dict(vision_window_chunks=3, text_window_replies=1, sink_tokens=2, text_window_tokens=3),
        4,
        expected([5, 6, 351, 450, 451], {2: FRAME, 3: FRAME}),
    ),
    "text outlives vision": (
        dict(vision_window_chunks=1, text_window_replies=3, sink_tokens=2, text_window_tokens=3),
        4,
        expected([5, 6, 151, 250, 251], {2: TEXT_ONLY, 3: TEXT_ONLY}),
    ),
    "content fits, no cut": (
        dict(vision_window_chunks=2, text_window_replies=2, sink_tokens=8, text_window_tokens=8),
        3,
        expected([5, 6, 7, 8, 9, 150, 151, 250, 251], {2: ALL}),
    ),
    "no sink, window only": (
        dict(vision_window_chunks=1, text_window_replies=1, sink_tokens=0, text_window_tokens=3),
        3,
        expected([251, 350, 351], {}),
    ),
    "previous text dropped entirely": (
        dict(vision_window_chunks=2, text_window_replies=2, sink_tokens=0, text_window_tokens=0),
        4,
        expected([], {3: ALL}),
    ),
    "nothing evicted yet": (
        dict(vision_window_chunks=16, text_window_replies=16),
        3,
        expected([5, 6, 7, 8, 9], {0: ALL, 1: ALL, 2: ALL}),
    ),
}


@pytest.mark.parametrize("policy,rounds,want", CASES.values(), ids=CASES.keys())
def test_eviction_keeps_exactly_the_policy_tokens_in_order(policy, rounds, want):
    cache = stream(CachePolicy(**policy), rounds)
    assert cache.token_ids() == want
    n = cache.length
    assert n == len(want) == cache.reserved
    for i, layer in enumerate(cache.layers):
        assert layer.values[0, 0, :n, 0].tolist() == [t + 1000 * i for t in want]


@pytest.mark.parametrize("policy,rounds,want", CASES.values(), ids=CASES.keys())
def test_moved_keys_equal_a_fresh_layout_of_the_kept_spans(policy, rounds, want):
    cache = stream(CachePolicy(**policy), rounds)
    fresh = new_cache(CachePolicy(mode=EvictionMode.NONE))
    for span in cache.spans:
        feed(fresh, [Piece(span.part, tuple(span.ids))], span.round)
    assert fresh.token_ids() == cache.token_ids()
    assert cache.cursor == fresh.cursor
    n = cache.length
    for ours, ref in zip(cache.layers, fresh.layers):
        torch.testing.assert_close(ours.keys[:, :, :n], ref.keys[:, :, :n], rtol=0, atol=1e-12)


def test_full_attention_keeps_everything():
    cache = stream(CachePolicy(mode=EvictionMode.NONE, vision_window_chunks=1, text_window_replies=1), 5)
    assert cache.token_ids() == expected(list(CONTENT), {r: ALL for r in range(5)})


def test_recompute_returns_the_kept_spans_and_empties_the_buffers():
    policy = dict(vision_window_chunks=2, text_window_replies=2, sink_tokens=2, text_window_tokens=3)
    streaming = stream(CachePolicy(**policy), 4)
    cache = new_cache(CachePolicy(mode=EvictionMode.RECOMPUTE, **policy))
    feed(cache, PREFIX + [Piece(Part.PREV_CONTENT, CONTENT), CLOSE], -1)
    for r in range(4):
        eviction = cache.evict(r)
        for span in eviction.refeed:  # what the session does: feed the kept spans again from 0
            feed(cache, [Piece(span.part, tuple(span.ids))], span.round)
        feed(cache, [Piece(p, ids) for p, ids in round_pieces(r).items()], r)
    eviction = cache.evict(4)
    assert cache.length == 0 and cache.spans == [] and cache.cursor == 0
    assert [i for s in eviction.refeed for i in s.ids] == streaming.token_ids()
    assert eviction.dropped > 0 and eviction.moved == 0


def test_evicting_an_empty_cache_is_a_no_op():
    cache = new_cache(CachePolicy())
    assert cache.evict(0).dropped == 0 and cache.token_ids() == []


def test_cache_size_is_constant_once_windows_are_full():
    policy = CachePolicy(vision_window_chunks=3, text_window_replies=3, sink_tokens=2, text_window_tokens=3)
    sizes = [stream(policy, rounds).length for rounds in range(6, 12)]
    assert len(set(sizes)) == 1


def test_buffers_grow_once_and_keep_their_contents():
    cache = new_cache(CachePolicy(mode=EvictionMode.NONE), capacity=4)
    feed(cache, PREFIX + [Piece(Part.PREV_CONTENT, CONTENT), CLOSE], -1)
    assert cache.capacity >= cache.length == 11
    assert cache.layers[1].values[0, 0, :11, 0].tolist() == [
        t + 1000 for t in [1, 2, 3, 4, 5, 6, 7, 8, 9, 98, 99]
    ]


def test_split_tail_relabels_the_generated_closing():
    cache = new_cache(CachePolicy())
    feed(cache, [Piece(Part.REPLY, (50, 51, 70))], 0)
    cache.split_tail(1, Part.REPLY_CLOSE)
    assert [(s.part, s.ids, s.slot) for s in cache.spans] == [
        (Part.REPLY, [50, 51], 0),
        (Part.REPLY_CLOSE, [70], 2),
    ]
    assert cache.spans[1].pos == 2.0
    cache.split_tail(1, Part.REPLY_CLOSE)  # the whole last span: relabelled in place
    assert [s.part for s in cache.spans] == [Part.REPLY, Part.REPLY_CLOSE]


@pytest.mark.parametrize(
    "lengths,head,tail,want",
    [
        ([3, 4], 2, 3, [[0, 1], [4, 5, 6]]),  # the cut falls inside both spans
        ([2, 2, 2], 2, 2, [[0, 1], [4, 5]]),  # the middle span goes whole
        ([5], 1, 1, [[0], [4]]),  # one span split in two
        ([2, 3], 3, 2, [[0, 1], [2, 3, 4]]),  # fits exactly: unchanged
        ([4], 0, 0, []),  # keep nothing
    ],
)
def test_cut_middle_splits_spans_at_the_cut(lengths, head, tail, want):
    spans, start = [], 0
    cache = new_cache(CachePolicy(mode=EvictionMode.NONE))
    for n in lengths:
        feed(
            cache, [Piece(Part.PREV_CONTENT, tuple(range(start, start + n)))], -1 - len(spans)
        )  # separate spans
        start += n
        spans = cache.spans
    out = _cut_middle(list(cache.spans), head, tail)
    assert [s.ids for s in out] == want
    for s in out:  # slots and positions still point at the same tokens
        assert s.slot == s.ids[0] if s.ids else True
        assert s.pos == float(s.ids[0]) and s.extent == len(s.ids)
