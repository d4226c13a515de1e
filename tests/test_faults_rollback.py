"""A chunk that fails part-way (issue 21, fault 1): out of GPU memory after some decoder layers wrote
their keys and values for its prefill, or after some tokens of its reply. The session must go on as
if the chunk had never come (bar what its eviction dropped): every later chunk gives exactly the
tokens of a session that skipped it. CPU, float32, greedy; the failure is torch's out-of-memory error
raised in the language model's last decoder layer, so the layers before it have written their part.
The break this catches: without `Session._forget_chunk` the cache counts tokens never written and
loses the previous reply's unfed tail, and later replies differ.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from conftest import SMALL_STREAM, random_frames
from core.chunk_guard import GuardedSession
from core.config import CachePolicy, EvictionMode, GenerationConfig
from core.engine import StreamingEngine

# Small windows: evictions (and, in RECOMPUTE, whole refeeds) from the third chunk on.
POLICY = CachePolicy(sink_tokens=6, text_window_tokens=10, vision_window_chunks=2, text_window_replies=3)
GREEDY = GenerationConfig(temperature=0.0, max_new_tokens=6, min_new_tokens=3)
CHUNKS = 7
PREFILL_TOKENS = 8  # more tokens than this in one call of a layer: a prefill; fewer: decode rows


class FailingLayer:
    """The last decoder layer raises torch's out-of-memory error on chosen calls of one kind
    ("prefill" or "decode", counted from 1 within their kind), before computing anything."""

    def __init__(self, model, kind: str, calls: set[int]) -> None:
        self.layer = model.model.model.language_model.layers[-1]
        self.forward = self.layer.forward
        self.kind, self.calls, self.seen, self.failed = kind, calls, 0, 0
        self.lock = threading.Lock()

    def __call__(self, hidden_states, *args, **kwargs):
        tokens = hidden_states.shape[0] * hidden_states.shape[1]
        kind = "prefill" if tokens > PREFILL_TOKENS else "decode"
        with self.lock:
            if kind == self.kind:
                self.seen += 1
                if self.seen in self.calls:
                    self.failed += 1
                    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.forward(hidden_states, *args, **kwargs)

    def __enter__(self) -> FailingLayer:
        self.layer.forward = self
        return self

    def __exit__(self, *exc: object) -> None:
        del self.layer.forward  # back to the class's


def engine_of(model, policy: CachePolicy, scheduler: bool, sessions: int = 1) -> StreamingEngine:
    if scheduler:
        return StreamingEngine(
            model, stream=SMALL_STREAM, cache=policy, generation=GREEDY, sessions=sessions, batched=True
        )
    return StreamingEngine(model, stream=SMALL_STREAM, cache=policy, generation=GREEDY)


def stream(engine: StreamingEngine, seed: int, skip: frozenset[int] = frozenset()) -> dict[int, tuple]:
    """Push chunks 0..CHUNKS-1 (leaving out `skip`); each pushed chunk's (reply texts, cached tokens),
    None for a chunk that failed."""
    rng = np.random.default_rng(seed)
    out = {}
    with GuardedSession(engine.start(previous_text="Blue against red, second half.")) as session:
        for k in range(CHUNKS):
            frames = random_frames(rng, 56, 84)
            if k in skip:
                continue
            lines = session.push(frames, k, k + 1)
            failed = session.last_failure is not None
            out[k] = (
                None if failed else ([c.text for c in lines], session.cache.token_ids(), session.cache.cursor)
            )
    return out


def failed_chunks(results: dict[int, tuple | None]) -> frozenset[int]:
    return frozenset(k for k, r in results.items() if r is None)


@pytest.mark.parametrize("mode", [EvictionMode.STREAMING, EvictionMode.RECOMPUTE])
@pytest.mark.parametrize("kind, calls", [("prefill", {4}), ("decode", {9}), ("prefill", {1})])
@pytest.mark.parametrize("scheduler", [False, True], ids=["solo", "scheduler"])
def test_a_chunk_failing_part_way_leaves_the_session_as_if_it_never_came(
    tiny_model, mode, kind, calls, scheduler
):
    policy = CachePolicy(**{**POLICY.__dict__, "mode": mode})
    with FailingLayer(tiny_model, kind, calls) as failing:
        hit = stream(engine_of(tiny_model, policy, scheduler), seed=1)
    assert failing.failed == 1
    skipped = failed_chunks(hit)
    assert len(skipped) == 1, hit.keys()
    reference = stream(engine_of(tiny_model, policy, scheduler), seed=1, skip=skipped)
    assert hit.keys() == reference.keys() | skipped
    for k, expected in reference.items():
        assert hit[k] == expected, f"chunk {k} after the failed chunk {sorted(skipped)}"


def test_a_failed_batched_forward_rolls_back_every_session_in_it(tiny_model):
    """Two sessions on one scheduler: the forwards that fail (a ragged prefill, a batched decode step)
    fail every chunk in them; each session then goes on exactly as alone without its failed chunks."""
    runs: dict[int, dict] = {}

    def worker(seed: int, engine: StreamingEngine, start: threading.Barrier) -> None:
        start.wait()
        runs[seed] = stream(engine, seed)

    for kind, calls in (("prefill", {3, 6}), ("decode", {7, 20})):
        engine = engine_of(tiny_model, POLICY, scheduler=True, sessions=2)
        start = threading.Barrier(2)
        with FailingLayer(tiny_model, kind, calls) as failing:
            threads = [threading.Thread(target=worker, args=(seed, engine, start)) for seed in (1, 2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=300)
        assert failing.failed == 2
        assert any(failed_chunks(r) for r in runs.values())
        for seed, hit in runs.items():
            skipped = failed_chunks(hit)
            reference = stream(engine_of(tiny_model, POLICY, scheduler=True), seed, skip=skipped)
            for k, expected in reference.items():
                assert hit[k] == expected, f"{kind}: session {seed}, chunk {k} after {sorted(skipped)}"
