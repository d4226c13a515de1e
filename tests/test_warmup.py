"""Compiling in the background (core/warmup.py) and the compile caches' folder (core/compile_cache.py).

The first chunks run eagerly while a thread compiles; the engine then switches to the compiled modules
between chunks. On a CPU the tests compile with the `aot_eager` backend: Dynamo traces and the switch
are real, and the arithmetic stays the eager ops', so a greedy session's tokens must not change at the
switch. The GPU test compiles with Inductor and CUDA graphs.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from conftest import SMALL_STREAM, random_frames
from core import warmup
from core.compile_cache import compile_cache_dir, compile_cache_key, use_compile_cache
from core.config import AccelerationConfig, CachePolicy, GenerationConfig
from core.engine import StreamingEngine
from core.loading import load_model
from core.warmup import CompileWarmup

GREEDY = GenerationConfig(temperature=0.0, max_new_tokens=6, repetition_penalty=1.05)
POLICY = CachePolicy(sink_tokens=6, text_window_tokens=10, vision_window_chunks=2, text_window_replies=3)
CHUNKS = 7
SWITCH_AFTER = 3  # chunks pushed before the compilation is let finish


@pytest.fixture
def traced_backend(monkeypatch):
    monkeypatch.setattr(warmup, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def fresh_model(tiny_dir, device="cpu", dtype="float32"):
    """Compilation changes the model's modules: each test gets its own."""
    return load_model(tiny_dir, device=device, dtype=dtype)


def engine_for(model, *, batched: bool, **acceleration) -> StreamingEngine:
    return StreamingEngine(
        model,
        stream=SMALL_STREAM,
        cache=POLICY,
        generation=GREEDY,
        acceleration=AccelerationConfig(**acceleration),
        sessions=2 if batched else None,
        batched=batched,
    )


def stream(engine: StreamingEngine, between=None):
    """Push CHUNKS chunks (calling `between(k)` before chunk k); each chunk's (text, compiled)."""
    rng = np.random.default_rng(5)
    out = []
    with engine.start(previous_text="Blue against red, second half.") as session:
        for k in range(CHUNKS):
            if between is not None:
                between(k)
            texts = [c.text for c in session.push(random_frames(rng, 56, 84), k, k + 1)]
            out.append((" ".join(texts), session.last_stats.compiled, session.cache.token_ids()))
    return out


def chunk_compile_chunk(engine: StreamingEngine):
    """One chunk, the warm-up run to its end (its thread not started: see `no_thread`), another chunk;
    the session's stats and cache after them."""
    rng = np.random.default_rng(0)
    with engine.start() as session:
        session.push(random_frames(rng, 56, 84), 0, 1)
        engine.model.warmup.run()
        session.push(random_frames(rng, 56, 84), 1, 2)
        return session.last_stats, session.cache.token_ids()


@pytest.fixture
def no_thread(monkeypatch):
    """The warm-up's thread is not started: a test runs it between chunks, so the switch falls at a known one."""
    monkeypatch.setattr(CompileWarmup, "start", lambda self: None)


@pytest.mark.parametrize("batched", [False, True], ids=["own-thread", "scheduler"])
def test_the_switch_to_compiled_modules_keeps_a_greedy_sessions_tokens(
    tiny_dir, traced_backend, no_thread, batched
):
    reference = stream(engine_for(fresh_model(tiny_dir), batched=batched, compile=False, static_decode=False))
    assert not any(compiled for _, compiled, _ in reference)

    # The compiled phase also takes the static decode step, made at the switch.
    model = fresh_model(tiny_dir)
    engine = engine_for(model, batched=batched, compile=True, static_decode=True)
    assert engine.decided.compile and engine.decided.compile_in_background
    phases = []

    def between(k: int) -> None:
        phases.append(engine.acceleration)
        if k == SWITCH_AFTER:
            model.warmup.run()  # the first chunk showed it the frame grid to compile the tower for

    switched = stream(engine, between)
    assert [compiled for _, compiled, _ in switched] == [k >= SWITCH_AFTER for k in range(CHUNKS)]
    eager, compiled = phases[0], phases[-1]
    assert not eager.compile and eager.static_decode  # the rest runs over the eager modules
    assert eager.why_off["compile"] == "waiting for the background compilation"
    assert compiled.compile and compiled.static_decode
    assert model.modules_version == 1  # graphs captured before the switch are captured again
    assert model.warmup.ok and model.warmup.vision_ok and model.compiled
    assert model.model.model.visual.blocks[0]._compiled_call_impl is not None  # the real modules switched
    assert [(text, ids) for text, _, ids in switched] == [(text, ids) for text, _, ids in reference]


def test_the_first_chunk_never_waits_for_the_compiler(tiny_dir, traced_backend):
    """With the thread started for real: the warm-up needs the first chunk's frame grid, so that chunk runs
    eagerly whatever the thread's speed; once it has finished, the next chunk runs compiled."""
    model = fresh_model(tiny_dir)
    engine = engine_for(model, batched=False, compile=True)
    rng = np.random.default_rng(0)
    with engine.start() as session:
        session.push(random_frames(rng, 56, 84), 0, 1)
        assert not session.last_stats.compiled
        assert model.warmup.finished.wait(120)
        session.push(random_frames(rng, 56, 84), 1, 2)
        assert session.last_stats.compiled and model.warmup.vision_ok


def test_a_compiler_that_fails_leaves_the_stream_running_uncompiled(tiny_dir, monkeypatch, no_thread, caplog):
    def broken(graph, example_inputs):
        raise RuntimeError("no C compiler")

    monkeypatch.setattr(warmup, "COMPILE_BACKEND", broken)
    torch._dynamo.reset()
    model = fresh_model(tiny_dir)
    engine = engine_for(model, batched=False, compile=True)
    stats, tokens = chunk_compile_chunk(engine)
    assert not stats.compiled and not model.compiled and tokens
    assert not engine.acceleration.compile
    assert "torch.compile does not work here" in engine.acceleration.why_off["compile"]
    assert "no C compiler" in caplog.text
    torch._dynamo.reset()


def test_without_background_compilation_the_modules_compile_at_start(tiny_dir, traced_backend):
    model = fresh_model(tiny_dir)
    engine = engine_for(model, batched=False, compile=True, compile_in_background=False)
    assert model.warmup is None and model.compiled and engine.acceleration.compile


def test_the_compile_cache_folder_names_what_compiled_code_depends_on(
    tiny_dir, tiny_model, monkeypatch, tmp_path
):
    monkeypatch.setenv("STREAMVLM_CACHE", str(tmp_path))
    config, cpu = tiny_model.model.config, torch.device("cpu")
    folder = compile_cache_dir(config, torch.float32, cpu)
    assert folder.parent == tmp_path / "compile"
    assert folder.name.startswith(f"torch{torch.__version__}".replace("+", "+"))
    assert compile_cache_key(config, torch.float32, cpu) == folder.name  # stable
    assert compile_cache_key(config, torch.bfloat16, cpu) != folder.name
    other = fresh_model(tiny_dir).model.config
    other.text_config.hidden_size *= 2
    assert compile_cache_key(other, torch.float32, cpu) != folder.name
    renamed = fresh_model(tiny_dir).model.config
    renamed._name_or_path = "/elsewhere/the-same-model"
    assert compile_cache_key(renamed, torch.float32, cpu) == folder.name  # where it lies does not matter


def test_the_compile_cache_is_used_unless_the_user_chose_one(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "mine"))
    in_use = use_compile_cache(tmp_path / "key")
    assert in_use == {
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "key" / "inductor"),
        "TRITON_CACHE_DIR": str(tmp_path / "mine"),
    }
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "key" / "inductor")
    assert (tmp_path / "key" / "inductor").is_dir() and not (tmp_path / "key" / "triton").exists()


@pytest.mark.gpu
def test_on_a_gpu_the_switch_to_inductor_and_graphs_keeps_greedy_tokens(tiny_dir):
    """Inductor after the switch, CUDA graphs (of the eager modules, then captured again) and the static
    step throughout, against the same model never compiled, in float32 (bf16 rounding would differ between
    fused and unfused kernels)."""
    reference = stream(
        engine_for(fresh_model(tiny_dir, "cuda"), batched=True, compile=False, cuda_graphs=False)
    )
    torch._dynamo.reset()
    model = fresh_model(tiny_dir, "cuda")
    engine = engine_for(model, batched=True, compile=True)

    def between(k: int) -> None:
        if k == SWITCH_AFTER:
            assert model.warmup.finished.wait(600)  # the scheduler switches before its next batch

    switched = stream(engine, between)
    assert engine.acceleration.compile and engine.acceleration.cuda_graphs
    assert not switched[0][1] and switched[-1][1]
    assert [(text, ids) for text, _, ids in switched] == [(text, ids) for text, _, ids in reference]


def test_a_grid_met_before_compiling_was_asked_for_is_compiled_too(tiny_dir, traced_backend, no_thread):
    """The app keeps a model across runs: a first run uncompiled, a second with compilation, on the same frames.
    The tower has no new grid to report then; the warm-up starts from the grids it met."""
    model = fresh_model(tiny_dir)
    stream(engine_for(model, batched=False, compile=False))
    stats, _ = chunk_compile_chunk(engine_for(model, batched=False, compile=True))
    assert (
        stats.compiled
        and model.warmup.vision_ok
        and model.model.model.visual.blocks[0]._compiled_call_impl is not None
    )


# -- the compiler's first use, done while the weights load ------------------------------------------


@pytest.fixture
def counted_probe(monkeypatch, traced_backend):
    """No prewarm from earlier tests; counts the probes that really run."""
    monkeypatch.setattr(warmup, "_prewarms", {})
    calls = []
    real = warmup.compile_works

    def probe(device):
        calls.append(device.type)
        return real(device)

    monkeypatch.setattr(warmup, "compile_works", probe)
    return calls


def test_loading_a_model_that_will_compile_runs_the_compiler_first_use_once(
    tiny_dir, counted_probe, no_thread
):
    """load_model starts the probe (imports, tables, toolchain) on a thread before the weights load;
    the background warm-up takes its answer instead of probing again while the stream runs."""
    model = load_model(tiny_dir, device="cpu", dtype="float32", acceleration=AccelerationConfig(compile=True))
    assert counted_probe == ["cpu"] or warmup._prewarms[("cpu", "aot_eager")].result(30)
    assert warmup.compiler_works(torch.device("cpu")) and counted_probe == ["cpu"]
    engine = engine_for(model, batched=False, compile=True)
    chunk_compile_chunk(engine)
    assert model.compiled and counted_probe == ["cpu"]  # the warm-up did not probe again


def test_a_model_that_will_not_compile_starts_no_prewarm(tiny_dir, counted_probe):
    load_model(tiny_dir, device="cpu", dtype="float32")  # a CPU compiles only when asked
    assert warmup._prewarms == {} and counted_probe == []


def test_the_prewarm_answers_per_backend(monkeypatch, counted_probe):
    """A backend that cannot compile gets its own answer, not the cached one of another backend."""
    cpu = torch.device("cpu")
    warmup.prewarm_compiler(cpu)
    assert warmup.compiler_works(cpu)

    def broken(graph, example_inputs):
        raise RuntimeError("no C compiler")

    monkeypatch.setattr(warmup, "COMPILE_BACKEND", broken)
    warmup.prewarm_compiler(cpu)
    assert not warmup.compiler_works(cpu) and counted_probe == ["cpu", "cpu"]
    torch._dynamo.reset()
