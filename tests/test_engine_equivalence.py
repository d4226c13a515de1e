"""The streaming engine equals stock transformers (float32, CPU, tiny real Qwen2.5-VL).

(a) With a policy that evicts nothing, every logit the engine computed while streaming chunk by
    chunk equals one stock forward over the whole sequence.
(b) After evictions, the cache gives the logits of a fresh stock forward over the kept tokens
    with contiguous positions: exactly for a one-layer model (whose cached keys depend only on
    each token and its position), for any depth with RECOMPUTE, and on layer 0 for any depth.
The last tests break the delta rotation and the position arithmetic on purpose and show that
these checks catch it.
"""

from __future__ import annotations

import pytest
import torch

import core.cache
import core.positions
from conftest import SMALL_STREAM, random_frames
from core.config import AccelerationConfig, CachePolicy, EvictionMode, GenerationConfig, StreamConfig
from core.conversation import Part
from core.engine import StreamingEngine
from reference import stock_forward

TOL = 1e-4
GEN = GenerationConfig(max_new_tokens=5, temperature=1.0, seed=7)
# Small windows so that a dozen chunks exercise every eviction path: vision dropped, replies
# retired into the previous text, the previous-text window sliding past its sink.
SMALL = dict(sink_tokens=6, text_window_tokens=10)
PREVIOUS = "The final between blue and red, second half, score one all, ten minutes to go."


def frame_size(k: int) -> tuple[int, int]:
    """Frames change size mid-stream (handled: each chunk is resized on its own)."""
    return (56, 84) if k < 4 else (112, 56)


def stream_chunks(
    model, policy, stream, rng, n, *, instruction="Commentate on this match", check=None, fast_decode=False
):
    engine = StreamingEngine(
        model,
        stream=stream,
        cache=policy,
        generation=GEN,
        acceleration=AccelerationConfig(static_decode=fast_decode),
    )
    session = engine.start(instruction=instruction, previous_text=PREVIOUS, trace=True)
    for k in range(n):
        before = len(session.trace.logits)
        session.push(random_frames(rng, *frame_size(k), n=stream.frames_per_chunk), k, k + 1)
        if check is not None:
            check(session, session.trace.logits[before:])
    return session


def kept_videos(session):
    return [session.trace.videos[s.round] for s in session.cache.spans if s.part is Part.VISION]


def diff_against_stock(session, entries, fps) -> float:
    """Max |logit difference| between the engine's recent logits and a stock forward over the cache."""
    ref, _ = stock_forward(session.model, session.cache.token_ids(), kept_videos(session), fps)
    worst = 0.0
    for end, logits in entries:
        worst = max(worst, (logits - ref[end - logits.shape[0] : end]).abs().max().item())
    return worst


@pytest.mark.parametrize("fast_decode", [False, True], ids=["dynamic", "static-step"])
@pytest.mark.parametrize("fps", [2.0, 4.0])
def test_no_eviction_equals_one_stock_forward(tiny_model, rng, fps, fast_decode):
    stream = StreamConfig(fps=fps, min_pixels=SMALL_STREAM.min_pixels, max_pixels=SMALL_STREAM.max_pixels)
    session = stream_chunks(
        tiny_model, CachePolicy(mode=EvictionMode.NONE), stream, rng, 6, fast_decode=fast_decode
    )
    assert session.cache.length == len(session.cache.token_ids()) > 100
    assert diff_against_stock(session, session.trace.logits, fps) < TOL


WINDOWS = [
    dict(vision_window_chunks=2, text_window_replies=3),  # text outlives vision
    dict(vision_window_chunks=3, text_window_replies=2),  # vision outlives text
    dict(vision_window_chunks=1, text_window_replies=1),  # a reply retires right after its chunk
]


@pytest.mark.parametrize("fast_decode", [False, True], ids=["dynamic", "static-step"])
@pytest.mark.parametrize(
    "windows", WINDOWS, ids=lambda w: f"v{w['vision_window_chunks']}-t{w['text_window_replies']}"
)
def test_streaming_cache_equals_fresh_forward_over_kept_tokens(one_layer_model, rng, windows, fast_decode):
    worst = []

    def check(session, entries):
        worst.append(diff_against_stock(session, entries, SMALL_STREAM.fps))

    session = stream_chunks(
        one_layer_model,
        CachePolicy(**SMALL, **windows),
        SMALL_STREAM,
        rng,
        10,
        check=check,
        fast_decode=fast_decode,
    )
    counts = session.cache.counts()
    assert counts[Part.PREV_CONTENT] == SMALL["sink_tokens"] + SMALL["text_window_tokens"]
    assert max(worst) < TOL, worst


def test_recompute_equals_fresh_forward_at_any_depth(tiny_model, rng):
    worst = []
    policy = CachePolicy(mode=EvictionMode.RECOMPUTE, vision_window_chunks=2, text_window_replies=3, **SMALL)
    stream_chunks(
        tiny_model,
        policy,
        SMALL_STREAM,
        rng,
        8,
        check=lambda s, e: worst.append(diff_against_stock(s, e, 2.0)),
    )
    assert max(worst) < TOL, worst


def test_streaming_layer0_cache_equals_fresh_forward(tiny_model, rng):
    """Deeper layers legitimately remember evicted context; layer 0 must match a fresh forward."""
    worst = []

    def check(session, entries):
        ids = session.cache.token_ids()
        _, ref_cache = stock_forward(session.model, ids, kept_videos(session), 2.0)
        ours = session.cache.layers[0]
        n = len(ids)
        assert ours.length == n
        ref_keys, ref_values = ref_cache.layers[0].keys, ref_cache.layers[0].values
        worst.append((ours.keys[:, :, :n] - ref_keys).abs().max().item())
        worst.append((ours.values[:, :, :n] - ref_values).abs().max().item())

    policy = CachePolicy(vision_window_chunks=2, text_window_replies=3, **SMALL)
    stream_chunks(tiny_model, policy, SMALL_STREAM, rng, 8, check=check)
    assert max(worst) < 1e-5, worst


def test_positions_stay_contiguous_after_eviction(one_layer_model, rng):
    """The cursor equals the extent of what is kept: no gaps, whatever was evicted."""

    def check(session, entries):
        spans = session.cache.spans
        for a, b in zip(spans, spans[1:]):
            assert b.pos == a.pos + a.extent and b.slot == a.slot + a.length
        assert spans[0].pos == 0 and session.cache.cursor == spans[-1].pos + spans[-1].extent

    stream_chunks(
        one_layer_model,
        CachePolicy(vision_window_chunks=2, text_window_replies=3, **SMALL),
        SMALL_STREAM,
        rng,
        8,
        check=check,
    )


# -- the checks above catch deliberate breaks ------------------------------------------------------


def test_missing_delta_rotation_is_caught(one_layer_model, rng, monkeypatch):
    monkeypatch.setattr(core.cache, "rotate_into", lambda dst, keys, cos, sin, **_: dst.copy_(keys))
    worst = []
    stream_chunks(
        one_layer_model,
        CachePolicy(vision_window_chunks=2, text_window_replies=3, **SMALL),
        SMALL_STREAM,
        rng,
        6,
        check=lambda s, e: worst.append(diff_against_stock(s, e, 2.0)),
    )
    assert max(worst) > 100 * TOL


def test_wrong_delta_sign_is_caught(one_layer_model, rng, monkeypatch):
    real = core.cache.rotation
    monkeypatch.setattr(core.cache, "rotation", lambda delta, inv_freq: real(-delta, inv_freq))
    worst = []
    stream_chunks(
        one_layer_model,
        CachePolicy(vision_window_chunks=2, text_window_replies=3, **SMALL),
        SMALL_STREAM,
        rng,
        6,
        check=lambda s, e: worst.append(diff_against_stock(s, e, 2.0)),
    )
    assert max(worst) > 100 * TOL


def test_wrong_vision_extent_is_caught(tiny_model, rng, monkeypatch):
    real = core.positions.vision_extent
    monkeypatch.setattr(core.positions, "vision_extent", lambda grid, dt: real(grid, dt) + 1)
    session = stream_chunks(tiny_model, CachePolicy(mode=EvictionMode.NONE), SMALL_STREAM, rng, 3)
    assert diff_against_stock(session, session.trace.logits, 2.0) > 100 * TOL


def test_wrong_temporal_step_is_caught(tiny_model, rng):
    stream = StreamConfig(fps=4.0, min_pixels=SMALL_STREAM.min_pixels, max_pixels=SMALL_STREAM.max_pixels)
    engine = StreamingEngine(
        tiny_model, stream=stream, cache=CachePolicy(mode=EvictionMode.NONE), generation=GEN
    )
    engine.dt *= 2  # the step of a 2-FPS stream applied to a 4-FPS one
    session = engine.start(previous_text=PREVIOUS, trace=True)
    for k in range(3):
        session.push(random_frames(rng, 56, 84, n=4), k, k + 1)
    assert diff_against_stock(session, session.trace.logits, 4.0) > 100 * TOL


def test_trace_logits_are_float32_and_finite(tiny_model, rng):
    session = stream_chunks(tiny_model, CachePolicy(), SMALL_STREAM, rng, 2)
    for _, logits in session.trace.logits:
        assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
