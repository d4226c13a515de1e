"""Batch-invariant mode (`acceleration.batch_invariant`, core/scheduler.py): a session's tokens do not
depend on the other sessions batched with it, bit for bit, in bf16 too.

In bf16 on this CPU the default batched path already shows why the mode exists: four sessions together
end 0-4 of their 5 chunks with the tokens each gives alone (measured when the mode was built), since
the matmuls of a batch of rows round otherwise than a single row's. On an H200 the same holds with
random 7B weights (docs/serving.md).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import core.scheduler
from conftest import SMALL_STREAM, random_frames
from core.acceleration import Acceleration
from core.config import AccelerationConfig, CachePolicy, GenerationConfig, resolve_config
from core.engine import StreamingEngine
from core.loading import load_model

POLICY = CachePolicy(sink_tokens=6, text_window_tokens=10, vision_window_chunks=2, text_window_replies=3)
GREEDY = GenerationConfig(temperature=0.0, max_new_tokens=8)
INVARIANT = AccelerationConfig(batch_invariant=True)
CHUNKS = 4


@pytest.fixture(scope="module")
def bf16_model(tiny_dir):
    return load_model(tiny_dir, device="cpu", dtype="bfloat16")


def engine_of(model, sessions: int, acceleration: AccelerationConfig = INVARIANT) -> StreamingEngine:
    return StreamingEngine(
        model,
        stream=SMALL_STREAM,
        cache=POLICY,
        generation=GREEDY,
        sessions=sessions,
        batched=True,
        acceleration=acceleration,
    )


def stream(engine: StreamingEngine, index: int, start: threading.Barrier | None = None) -> list[list[int]]:
    """Stream `index`: its own previous text and frame size; the cached tokens after each chunk."""
    session = engine.start(previous_text=f"Stream {index}, second half.")
    rng = np.random.default_rng(index)
    if start is not None:
        start.wait(60)  # first chunks together: they would share forwards in the default mode
    out = []
    with session:
        for k in range(CHUNKS):
            session.push(random_frames(rng, 56, 84 + 28 * (index % 2)), k, k + 1)
            out.append(session.cache.token_ids())
    return out


def together(engine: StreamingEngine, count: int) -> list[list[list[int]]]:
    results: list = [None] * count
    start = threading.Barrier(count)

    def worker(index: int) -> None:
        results[index] = stream(engine, index, start)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return results


def test_in_bf16_batched_sessions_give_exactly_the_tokens_each_gives_alone(bf16_model, monkeypatch):
    ragged = []
    real_ragged = bf16_model.forward_ragged
    monkeypatch.setattr(
        bf16_model, "forward_ragged", lambda *a, **k: ragged.append(1) or real_ragged(*a, **k)
    )
    alone = [stream(engine_of(bf16_model, 1), index) for index in range(4)]
    engine = engine_of(bf16_model, 4)
    assert together(engine, 4) == alone
    scheduler = engine.scheduler
    assert set(scheduler.decode._buckets) == {core.scheduler.BATCH_INVARIANT_ROWS}  # every step one shape
    assert scheduler.decode.rows > scheduler.decode.batches  # sessions did decode together
    assert not ragged  # each prefill ran alone, as for a session alone
    assert scheduler.vision_calls == scheduler.vision_chunks  # each chunk's own tower call


def test_more_decoding_sessions_than_the_fixed_rows_run_as_several_forwards(bf16_model, monkeypatch):
    monkeypatch.setattr(core.scheduler, "BATCH_INVARIANT_ROWS", 2)
    alone = [stream(engine_of(bf16_model, 1), index) for index in range(3)]
    engine = engine_of(bf16_model, 3)
    assert together(engine, 3) == alone
    assert set(engine.scheduler.decode._buckets) == {2}


def test_the_mode_is_asked_for_only_and_said_in_the_acceleration_line(tmp_path):
    import torch

    off = Acceleration.decide(AccelerationConfig(), torch.device("cpu"))
    assert not off.batch_invariant and "batch_invariant off (asked for only" in off.describe()
    on = Acceleration.decide(AccelerationConfig(batch_invariant=True), torch.device("cpu"))
    assert on.batch_invariant and "batch_invariant on" in on.describe()
    config = tmp_path / "invariant.toml"
    config.write_text("[acceleration]\nbatch_invariant = true\n")
    assert resolve_config(config, {}).acceleration.batch_invariant is True


@pytest.mark.gpu
def test_on_the_gpu_in_bf16_with_graphs_batched_sessions_give_their_alone_tokens(tiny_dir):
    """The GPU path (compiled modules, CUDA graphs of the fixed-size steps and of the tower) in bf16,
    where cuBLAS chooses kernels by shape: still the tokens each session gives alone."""
    gpu = load_model(tiny_dir, device="cuda", dtype="bfloat16")
    acceleration = AccelerationConfig(batch_invariant=True, compile_in_background=False)
    alone = [stream(engine_of(gpu, 1, acceleration), index) for index in range(4)]
    shared = engine_of(gpu, 4, acceleration)
    assert together(shared, 4) == alone
    assert set(shared.scheduler.decode._buckets) == {core.scheduler.BATCH_INVARIANT_ROWS}
