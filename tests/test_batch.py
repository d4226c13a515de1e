"""Concurrent sessions on one scheduler (core/scheduler.py): their prefills run as one ragged forward
(core/ragged.py) and their decode steps as one batched forward (core/batch.py), and every session
gets exactly the tokens it gets alone."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from conftest import SMALL_STREAM, random_frames
from core.config import AccelerationConfig, CachePolicy, GenerationConfig
from core.engine import StreamingEngine

POLICY = CachePolicy(sink_tokens=6, text_window_tokens=10, vision_window_chunks=2, text_window_replies=3)
# Sampled hot with a seed per session, so replies stop early and late, and greedy ones.
STREAMS = [
    # (previous text, frame size, first chunk, chunks, generation)
    ("Blue against red.", (56, 84), 0, 9, GenerationConfig(temperature=0.0, max_new_tokens=8)),
    (
        "A long afternoon at the stadium, second half, rain.",
        (112, 112),
        2,
        7,
        GenerationConfig(temperature=1.5, max_new_tokens=10, seed=7),
    ),
    ("", (84, 56), 0, 4, GenerationConfig(temperature=1.5, max_new_tokens=5, seed=3)),
    (
        "Cup final.",
        (56, 56),
        4,
        6,
        GenerationConfig(temperature=0.0, max_new_tokens=12, repetition_penalty=1.2),
    ),
    # The first stream's frame size: their chunks share vision tower calls.
    ("Derby day.", (56, 84), 0, 5, GenerationConfig(temperature=0.0, max_new_tokens=6)),
]


def run_stream(engine: StreamingEngine, index: int) -> list:
    previous, size, first, chunks, generation = STREAMS[index]
    engine.generation = generation  # read by the session when it starts (a test's way to vary it per stream)
    session = engine.start(previous_text=previous, seed=generation.seed)
    rng = np.random.default_rng(index)
    out = []
    try:
        for k in range(first, first + chunks):
            lines = session.push(random_frames(rng, *size), k, k + 1)
            out.append(
                (session.cache.token_ids()[-40:], [c.text for c in lines], session.last_stats.new_tokens)
            )
    finally:
        session.close()
    return out


def alone(model, acceleration: AccelerationConfig | None = None) -> list:
    results = []
    for index in range(len(STREAMS)):
        engine = StreamingEngine(
            model, stream=SMALL_STREAM, cache=POLICY, sessions=1, acceleration=acceleration
        )
        results.append(run_stream(engine, index))
    return results


def together(
    model, batched: bool = True, pad: bool | None = None, acceleration: AccelerationConfig | None = None
) -> tuple[list, StreamingEngine]:
    """All streams at once from threads of their own; each session's generation is set before it starts.
    `pad`: pad batches to a power of two with scratch rows (as the CUDA-graph path does)."""
    engine = StreamingEngine(
        model,
        stream=SMALL_STREAM,
        cache=POLICY,
        sessions=len(STREAMS),
        batched=batched,
        acceleration=acceleration,
    )
    if pad is not None:
        engine.scheduler.decode.pad = pad
    results: list = [None] * len(STREAMS)
    start_lock = threading.Lock()  # engine.generation is read at start: one start at a time
    errors = []
    ready = threading.Barrier(len(STREAMS))  # first chunks arrive together: their prefills share a batch

    def worker(index: int) -> None:
        try:
            previous, size, first, chunks, generation = STREAMS[index]
            with start_lock:
                engine.generation = generation
                session = engine.start(previous_text=previous, seed=generation.seed)
            rng = np.random.default_rng(index)
            out = []
            ready.wait(60)
            with session:
                for k in range(first, first + chunks):
                    lines = session.push(random_frames(rng, *size), k, k + 1)
                    out.append(
                        (
                            session.cache.token_ids()[-40:],
                            [c.text for c in lines],
                            session.last_stats.new_tokens,
                        )
                    )
            results[index] = out
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(STREAMS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert not errors, errors
    return results, engine


@pytest.fixture(scope="module")
def solo(tiny_model):
    return alone(tiny_model)


def test_concurrent_sessions_get_their_solo_tokens_from_batched_steps(tiny_model, solo):
    batched, engine = together(tiny_model)
    assert batched == solo
    decode = engine.scheduler.decode
    assert decode.batches > 0 and decode.rows > decode.batches  # really batched
    assert engine.scheduler.prefill_jobs > engine.scheduler.prefill_batches  # prefills shared forwards
    lengths = {n for stream in solo for _, _, n in stream}
    assert min(lengths) < max(lengths)  # replies that stop early and ones that run to their limit
    assert engine.pool.in_use == 0  # every slot back


# The GPU's decode: the static step, and a lone session's next step queued before its token is read back.
OVERLAP = AccelerationConfig(static_decode=True, overlap=True)
FORCED = GenerationConfig(temperature=0.0, max_new_tokens=16, min_new_tokens=16)


def scheduled(model, sessions: int, acceleration: AccelerationConfig | None = None) -> StreamingEngine:
    """An engine with the scheduler (the path of `core run` with one slot), 16 greedy tokens forced."""
    return StreamingEngine(
        model,
        stream=SMALL_STREAM,
        cache=POLICY,
        generation=FORCED,
        sessions=sessions,
        batched=True,
        acceleration=acceleration,
    )


def test_a_lone_session_queues_its_next_step_ahead_through_the_scheduler(tiny_model, solo):
    """`core run` and the app: one session on the scheduler, its steps taken on its own thread (`hold`)
    with the next forward started before the token is read (wasted after a stop token): the same tokens,
    replies that stop early and replies that run to their limit among them."""
    engine = StreamingEngine(
        tiny_model, stream=SMALL_STREAM, cache=POLICY, sessions=1, batched=True, acceleration=OVERLAP
    )
    ahead = []
    for index in range(len(STREAMS)):
        assert run_stream(engine, index) == solo[index]
        ahead.append(engine.steps_ahead)
    assert ahead[0] > 0 and all(a < b for a, b in zip(ahead, ahead[1:]))  # every stream's replies did


def test_a_reply_handed_over_to_the_model_thread_steps_ahead_again_once_alone(tiny_model):
    """The model thread busy for two of a lone session's steps (its `hold` refused twice): those go
    through the model thread, and the reply's later steps are started ahead again, same tokens."""
    frames = random_frames(np.random.default_rng(5), 56, 84)

    def reply(acceleration, refuse=()):
        engine = scheduled(tiny_model, 1, acceleration)
        hold, calls = engine.scheduler.hold, []

        def refusing():
            calls.append(len(calls) + 1)
            return False if len(calls) in refuse else hold()

        engine.scheduler.hold = refusing
        with engine.start(previous_text="Blue against red.") as session:
            session.push(frames, 0, 1)
            return session.cache.token_ids(), engine.steps_ahead

    expected, _ = reply(None)
    tokens, ahead = reply(OVERLAP, refuse={2, 3})
    assert tokens == expected
    assert ahead == 13  # 15 steps could start ahead (not the last); the two refused did not


def test_sessions_that_overlap_alone_and_batch_together_keep_their_tokens(tiny_model, solo):
    """Five sessions at once with overlap on (mostly batched: they seldom decode alone): every token stays
    its solo one."""
    batched, engine = together(tiny_model, acceleration=OVERLAP)
    assert batched == solo
    assert engine.scheduler.decode.batches > 0 and engine.pool.in_use == 0


def test_a_session_stepping_ahead_alone_joins_the_batch_mid_reply_when_another_arrives(tiny_model):
    """A decodes alone, its steps started ahead; at its third such step B's chunk is queued, so A's next
    step goes through the model thread, batched with B's once B decodes: both get their alone tokens."""
    frames = {name: random_frames(np.random.default_rng(seed), 56, 84) for seed, name in enumerate("ab")}

    def stream(engine, name):
        with engine.start(previous_text=f"Stream {name}.") as session:
            for k in range(2):
                session.push(frames[name], k, k + 1)
            return session.cache.token_ids()

    expected = {name: stream(scheduled(tiny_model, 1), name) for name in "ab"}
    engine = scheduled(tiny_model, 2, OVERLAP)
    scheduler, hold = engine.scheduler, engine.scheduler.hold
    b_queued, got = threading.Event(), {}

    def hold_then_let_b_in():
        granted = hold()
        if granted and engine.steps_ahead >= 3 and not b_queued.is_set():
            b.start()
            while not scheduler._prefills:  # B's chunk waits for this step to be released
                threading.Event().wait(0.005)
            b_queued.set()
        return granted

    scheduler.hold = hold_then_let_b_in
    b = threading.Thread(target=lambda: got.__setitem__("b", stream(engine, "b")))
    got["a"] = stream(engine, "a")
    b.join(120)
    assert b_queued.is_set() and got == expected
    assert scheduler.decode.batches > 0  # A and B shared steps after the hand-over


def test_padding_rows_in_the_scratch_slot_change_nothing(tiny_model, solo):
    """Batches padded to a power of two (the graph path's shapes) with rows that write into the pool's
    scratch slot: the real rows' tokens are unchanged."""
    batched, engine = together(tiny_model, pad=True)
    assert batched == solo
    assert engine.scheduler.decode.padded > 0  # some batches really carried scratch rows
    assert all(size & (size - 1) == 0 for size in engine.scheduler.decode._buckets)  # only powers of two


def test_a_row_that_writes_into_another_sessions_slot_is_caught(tiny_model, solo, monkeypatch):
    import core.batch

    real = core.batch._PoolRows.update

    def crossed(self, key_states, value_states, *args, **kwargs):
        if len(self.slots) > 1:
            self.slots = self.slots.flip(0)  # row b writes and reads another session's cache
        return real(self, key_states, value_states, *args, **kwargs)

    monkeypatch.setattr(core.batch._PoolRows, "update", crossed)
    batched, engine = together(tiny_model)
    assert engine.scheduler.decode.rows > engine.scheduler.decode.batches
    assert batched != solo


def test_a_prefill_segment_that_writes_into_another_sessions_cache_is_caught(tiny_model, solo, monkeypatch):
    import core.ragged

    real = core.ragged._RaggedLayer.update

    def crossed(self, key_states, value_states, *args, **kwargs):
        if len(self.parts) > 1 and len(set(self.lengths)) > 1:
            self.parts = self.parts[::-1]  # segment i writes and reads another session's cache
            self.lengths = self.lengths[::-1]
        return real(self, key_states, value_states, *args, **kwargs)

    monkeypatch.setattr(core.ragged._RaggedLayer, "update", crossed)
    batched, engine = together(tiny_model)
    assert engine.scheduler.prefill_jobs > engine.scheduler.prefill_batches
    assert batched != solo


def test_a_position_off_by_one_in_the_ragged_prefill_is_caught(tiny_model, solo, monkeypatch):
    import core.model

    real = core.model.StreamModel.forward_ragged

    def shifted(self, embeds, positions, caches, lengths, all_logits=None):
        if len(lengths) > 1:
            positions = positions.clone()
            positions[:, lengths[0] :] += 1  # every segment after the first
        return real(self, embeds, positions, caches, lengths, all_logits)

    monkeypatch.setattr(core.model.StreamModel, "forward_ragged", shifted)
    batched, engine = together(tiny_model)
    assert engine.scheduler.prefill_jobs > engine.scheduler.prefill_batches
    assert batched != solo


def test_a_position_off_by_one_in_the_batched_path_is_caught(tiny_model, solo, monkeypatch):
    import core.scheduler

    real = core.scheduler.Scheduler.step
    monkeypatch.setattr(
        core.scheduler.Scheduler,
        "step",
        lambda self, slot, token, position, *rest, **options: real(
            self, slot, token, position + 1, *rest, **options
        ),
    )
    batched, _ = together(tiny_model)
    assert batched != solo


@pytest.mark.gpu
def test_batched_steps_on_the_gpu_give_the_solo_tokens(tiny_dir):
    """The same check on a GPU (tiny model, float32): solo sessions run the captured static step,
    batched ones the batched forward; the tokens must agree."""
    import torch

    from core.loading import load_model

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gpu = load_model(tiny_dir, device="cuda", dtype="float32")
    batched, engine = together(gpu)
    assert engine.scheduler.decode.rows > engine.scheduler.decode.batches
    assert batched == alone(gpu)


@pytest.mark.gpu
def test_a_lone_session_on_the_gpu_steps_ahead_through_the_scheduler_with_the_solo_tokens(tiny_dir):
    """`core run` and the app on a GPU (tiny model, float32): one session on the scheduler, its captured
    static step launched ahead of the token's read-back; the tokens of the engine without a scheduler."""
    import torch

    from core.loading import load_model

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gpu = load_model(tiny_dir, device="cuda", dtype="float32")
    eager = AccelerationConfig(compile=False)  # graphs, static step and overlap as decided on a GPU
    engine = StreamingEngine(
        gpu, stream=SMALL_STREAM, cache=POLICY, sessions=1, batched=True, acceleration=eager
    )
    assert engine.scheduler is not None and engine.decided.cuda_graphs and engine.decided.overlap
    reference = alone(gpu, eager)
    for index in range(len(STREAMS)):
        assert run_stream(engine, index) == reference[index], index
    assert engine.steps_ahead > 0
