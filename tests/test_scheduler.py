"""The scheduler's order of work (core/scheduler.py): earliest deadline first, within a token budget,
and a failed chunk fails alone."""

from __future__ import annotations

import threading

import pytest
import torch

from conftest import SMALL_STREAM
from core.config import CachePolicy
from core.conversation import Part, Piece
from core.engine import StreamingEngine
from core.scheduler import PrefillJob, Scheduler

POLICY = CachePolicy(sink_tokens=6, text_window_tokens=10, vision_window_chunks=2, text_window_replies=3)


@pytest.fixture
def engine(tiny_model):
    engine = StreamingEngine(tiny_model, stream=SMALL_STREAM, cache=POLICY, sessions=4, batched=True)
    yield engine
    engine.scheduler.close()


def text_job(session, order: list, name: str, deadline: float, tokens: int = 4, hold=None) -> PrefillJob:
    """A text-only prefill of a few tokens into `session`'s cache that records when it is prepared."""
    model = session.model

    def prepare(_features):
        if hold is not None:
            hold.wait(30)
        order.append(name)
        ids = model.encode(" go")[:1] * tokens
        positions = session.cache.reserve([Piece(Part.REPLY, tuple(ids))], session.round)
        return model.embed(torch.tensor(ids)), positions, session.cache, False

    return PrefillJob(prepare, None, tokens, deadline)


def run_jobs(scheduler: Scheduler, jobs: list[PrefillJob]) -> list[BaseException | None]:
    errors: list = [None] * len(jobs)

    def submit(i: int) -> None:
        try:
            scheduler.prefill(jobs[i])
        except BaseException as exc:  # recorded for the test
            errors[i] = exc

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
        thread.join(0.2)  # queued in this order (the first one holds the model thread)
    for thread in threads:
        thread.join(60)
    return errors


def behind_a_busy_chunk(engine) -> tuple[list[str], list[PrefillJob]]:
    """Chunks c, a, b (deadlines 30, 10, 20) queued while a first one holds the model thread; returns
    the order their inputs were prepared in and the jobs, once all ran."""
    sessions = [engine.start() for _ in range(4)]
    order: list[str] = []
    hold = threading.Event()
    jobs = [text_job(sessions[0], order, "busy", 0.0, hold=hold)]
    jobs += [text_job(s, order, name, d) for s, name, d in zip(sessions[1:], "cab", (30.0, 10.0, 20.0))]
    runner = threading.Thread(target=run_jobs, args=(engine.scheduler, jobs))
    runner.start()
    while len(engine.scheduler._prefills) < 3:  # the other three wait while the first holds the thread
        threading.Event().wait(0.01)
    hold.set()
    runner.join(60)
    for s in sessions:
        s.close()
    return order, jobs


def test_waiting_chunks_run_earliest_deadline_first(engine):
    order, jobs = behind_a_busy_chunk(engine)
    assert order == ["busy", "a", "b", "c"]
    assert engine.scheduler.prefill_batches == 2  # the three waiting ones went in one forward
    assert [j.batch_size for j in jobs] == [1, 3, 3, 3]


def test_the_token_budget_splits_a_batch_by_deadline(engine):
    engine.scheduler.prefill_tokens = 8  # two 4-token jobs per forward
    order, jobs = behind_a_busy_chunk(engine)
    assert order == ["busy", "a", "b", "c"]
    assert [j.batch_size for j in jobs[1:]] == [1, 2, 2]  # c (latest) waited for the next forward


def test_a_chunk_that_fails_to_prepare_fails_alone(engine):
    sessions = [engine.start() for _ in range(3)]
    order: list[str] = []
    hold = threading.Event()
    jobs = [text_job(sessions[0], order, "busy", 0.0, hold=hold)]
    bad = text_job(sessions[1], order, "bad", 1.0)

    def broken(_features):
        raise ValueError("this chunk is broken")

    bad.prepare = broken
    jobs += [bad, text_job(sessions[2], order, "good", 2.0)]
    runner = threading.Thread(target=lambda: errors.extend(run_jobs(engine.scheduler, jobs)))
    errors: list = []
    runner.start()
    while len(engine.scheduler._prefills) < 2:
        threading.Event().wait(0.01)
    hold.set()
    runner.join(60)
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], ValueError)
    assert jobs[2].logits is not None and jobs[2].logits.shape[-1] > 0
    for s in sessions:
        s.close()


def test_the_vision_tower_over_several_chunks_gives_each_its_own_features(tiny_model):
    """One tower call over chunks of one frame grid (as a prefill batch runs it) equals one call each."""
    import numpy as np

    from conftest import random_frames
    from core.frames import video_input

    rng = np.random.default_rng(0)
    videos = [video_input(random_frames(rng, 56, 84), SMALL_STREAM, tiny_model.vision) for _ in range(3)]
    together = tiny_model.encode_videos([v.pixel_values for v in videos], [v.grid_thw for v in videos])
    alone = [tiny_model.encode_video(v.pixel_values, v.grid_thw) for v in videos]
    for a, b in zip(together, alone, strict=True):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(alone[0], alone[1], atol=1e-3)  # each chunk's own: a mix-up would show


def test_tower_calls_take_power_of_two_counts_so_few_shapes_ever_meet_the_tower():
    from core.scheduler import vision_pieces

    assert vision_pieces(13) == [8, 4, 1] and vision_pieces(16) == [16] and vision_pieces(0) == []
    sizes = set()
    for n in range(1, 64):
        pieces = vision_pieces(n)
        assert sum(pieces) == n and pieces == sorted(pieces, reverse=True)
        assert all(p & (p - 1) == 0 for p in pieces) and len(set(pieces)) == len(pieces)
        sizes.update(pieces)
    assert sizes == {1, 2, 4, 8, 16, 32}  # up to 63 chunks at once: six shapes per frame grid


def test_a_prefill_batch_of_seven_chunks_of_one_grid_calls_the_tower_with_4_2_and_1(engine, monkeypatch):
    """The scheduler splits a grid's chunks into power-of-two calls, and each chunk still gets its own
    features (as alone); a chunk of another grid has its own call."""
    import types

    import numpy as np

    from conftest import random_frames
    from core.frames import video_input

    model = engine.model
    rng = np.random.default_rng(0)
    videos = [video_input(random_frames(rng, 56, 84), SMALL_STREAM, model.vision) for _ in range(7)]
    videos.append(video_input(random_frames(rng, 84, 56), SMALL_STREAM, model.vision))
    counts = []
    encode_videos = model.encode_videos
    monkeypatch.setattr(model, "encode_videos", lambda p, g: counts.append(len(p)) or encode_videos(p, g))
    jobs = [types.SimpleNamespace(video=v) for v in videos]
    features = engine.scheduler._vision(jobs)
    assert sorted(counts) == [1, 1, 2, 4] and engine.scheduler.vision_chunks == 8
    for video, got in zip(videos, features, strict=True):
        alone = encode_videos([video.pixel_values], [video.grid_thw])[0]
        assert got.shape == alone.shape and torch.allclose(got, alone, atol=1e-5)


def test_a_sessions_failing_draw_fails_its_own_step_only(engine):
    """Two sessions' steps in one batched forward; one's draw raises: the other gets its token."""
    first, second = engine.start(), engine.start()
    order: list[str] = []
    hold = threading.Event()
    results: dict = {}

    def broken_draw(_logits):
        raise ValueError("this session's sampler is broken")

    def step(name: str, session, draw) -> None:
        try:
            token = torch.zeros(1, dtype=torch.long)
            results[name] = engine.scheduler.step(session._slot, token, 0.0, 0, 1.0, sample=draw)
        except Exception as exc:  # recorded for the test
            results[name] = exc

    busy = threading.Thread(
        target=run_jobs, args=(engine.scheduler, [text_job(first, order, "busy", 0.0, hold=hold)])
    )
    busy.start()
    while not engine.scheduler._busy:
        threading.Event().wait(0.01)
    threads = [
        threading.Thread(target=step, args=("good", first, lambda logits: logits.argmax().view(1))),
        threading.Thread(target=step, args=("bad", second, broken_draw)),
    ]
    for thread in threads:
        thread.start()
    while len(engine.scheduler._steps) < 2:  # both wait for the model thread: one batch
        threading.Event().wait(0.01)
    hold.set()
    for thread in (busy, *threads):
        thread.join(60)
    assert engine.scheduler.decode.rows == 2 and engine.scheduler.decode.batches == 1
    assert isinstance(results["bad"], ValueError)
    logits, token, token_id = results["good"]
    assert token_id == int(logits.argmax())
    first.close()
    second.close()
