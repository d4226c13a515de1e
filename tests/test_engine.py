"""Session behaviour: seeding, forced lengths, the token callback, statistics and misuse."""

from __future__ import annotations

import pytest

from conftest import SMALL_STREAM, random_frames
from core.config import GenerationConfig
from core.engine import StreamingEngine, one_line
from core.types import Frame


def commentary(model, rng_seed: int, seed: int, chunks: int = 4, **gen):
    import numpy as np

    rng = np.random.default_rng(rng_seed)
    engine = StreamingEngine(model, stream=SMALL_STREAM, generation=GenerationConfig(seed=seed, **gen))
    session = engine.start(previous_text="A test match.")
    out = []
    for k in range(chunks):
        out += session.push(random_frames(rng, 56, 84), k, k + 1)
    return out, session


def test_same_seed_same_commentary_and_different_seed_differs(tiny_model):
    first, _ = commentary(tiny_model, 0, seed=5, min_new_tokens=3)
    again, _ = commentary(tiny_model, 0, seed=5, min_new_tokens=3)
    other, _ = commentary(tiny_model, 0, seed=6, min_new_tokens=3)
    assert first == again
    assert [c.text for c in first] != [c.text for c in other]


def test_forced_length_and_chunk_statistics(tiny_model):
    _, session = commentary(tiny_model, 1, seed=0, chunks=3, max_new_tokens=7, min_new_tokens=7)
    stats = session.last_stats
    assert stats.new_tokens == 7
    assert (stats.t_start, stats.t_end) == (2, 3)
    assert stats.vision_tokens == 6  # 56x84 -> 56x84 px (within bounds) -> 2x3 merged tokens
    assert stats.cached_tokens == session.cache.length > stats.prefill_tokens > stats.vision_tokens
    assert min(stats.vision_ms, stats.prefill_ms, stats.decode_ms) > 0
    assert stats.decode_ms_per_token == pytest.approx(stats.decode_ms / 6)


def test_token_callback_streams_the_commentary_text(tiny_model, rng):
    pieces: list[str] = []
    engine = StreamingEngine(
        tiny_model, stream=SMALL_STREAM, generation=GenerationConfig(seed=2, min_new_tokens=4)
    )
    session = engine.start(on_token=pieces.append)
    lines = []
    for k in range(3):
        before = len(pieces)
        events = session.push(random_frames(rng, 56, 56), k, k + 1)
        streamed = one_line("".join(pieces[before:]))
        assert streamed == (events[0].text if events else "")
        lines += events
    assert lines


def test_frames_may_be_frame_objects_and_instruction_may_be_omitted(tiny_model, rng):
    engine = StreamingEngine(tiny_model, stream=SMALL_STREAM, generation=GenerationConfig(seed=0))
    session = engine.start(instruction=None)
    frames = [Frame(f, 0.5 * i) for i, f in enumerate(random_frames(rng, 56, 56))]
    session.push(frames, 0, 1)
    assert session.last_stats.new_tokens >= 1


@pytest.mark.parametrize(
    "t0,t1,match",
    [(3, 3, "end after it starts"), (0.5, 1.5, "forward in time")],
)
def test_chunks_must_move_forward(tiny_model, rng, t0, t1, match):
    session = StreamingEngine(tiny_model, stream=SMALL_STREAM).start()
    session.push(random_frames(rng, 56, 56), 0, 1)
    with pytest.raises(ValueError, match=match):
        session.push(random_frames(rng, 56, 56), t0, t1)


def test_gaps_in_time_are_allowed_and_labelled(tiny_model, rng):
    session = StreamingEngine(tiny_model, stream=SMALL_STREAM).start()
    session.push(random_frames(rng, 56, 56), 0, 1)
    session.push(random_frames(rng, 56, 56), 7, 8)  # skipped chunks show in the time label
    label = next(s for s in reversed(session.cache.spans) if s.part.value == "time_label")
    assert tiny_model.decode(label.ids).startswith("Time=7.0-8.0s")


def test_a_closed_session_refuses_chunks(tiny_model, rng):
    session = StreamingEngine(tiny_model, stream=SMALL_STREAM).start()
    session.close()
    session.close()
    with pytest.raises(RuntimeError, match="closed"):
        session.push(random_frames(rng, 56, 56), 0, 1)


@pytest.mark.parametrize(
    "raw,line",
    [("\n goal ...", "goal ..."), ("a\n\nb", "a b"), ("x\x03y", "x y"), ("  ", "")],
)
def test_commentary_is_one_clean_line(raw, line):
    assert one_line(raw) == line


def test_every_kind_of_session_is_a_commentary_session(tiny_model):
    """The local session, the stock baseline and the remote session share one interface."""
    from core.config import GenerationConfig
    from core.engine import StreamingEngine
    from core.remote.client import RemoteSession
    from core.types import CommentarySession
    from evals.stock import StockStream

    with StreamingEngine(tiny_model).start() as local:
        assert isinstance(local, CommentarySession)
    with StockStream(tiny_model, SMALL_STREAM, GenerationConfig()) as stock:
        assert isinstance(stock, CommentarySession)
    for cls in (RemoteSession,):  # connecting needs a server: the class must carry the methods
        assert all(callable(getattr(cls, name, None)) for name in ("push", "close", "__enter__", "__exit__"))
