"""GPU out of memory in one chunk (issue 21, fault 1). On the CPU the error is injected in the model
call, in the session alone, in `python -m core run` and in the server (whose other sessions go on);
tests/test_faults_rollback.py injects it part-way through a prefill or a reply. On a GPU (`gpu` test)
a memory cap makes the allocator raise a real one."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from websockets.sync.client import connect

import core.engine
from clihelpers import CLIP
from conftest import SMALL_STREAM, random_frames
from core.__main__ import main as core_main
from core.chunk_guard import GuardedSession
from core.config import GenerationConfig, StreamConfig
from core.engine import StreamingEngine
from core.remote import protocol as p
from serverhelpers import RunningServer

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


def fail_call(monkeypatch, which: set[int]) -> dict:
    """Model calls (counted from 1) in `which` raise torch's out-of-memory error; returns the count."""
    real = core.engine.video_input
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] in which:
            raise torch.OutOfMemoryError(OOM)
        return real(*args, **kwargs)

    monkeypatch.setattr(core.engine, "video_input", flaky)
    return calls


@pytest.fixture
def engine(tiny_model):
    generation = GenerationConfig(max_new_tokens=3, min_new_tokens=3, seed=0)
    stream = StreamConfig(min_pixels=4 * 28 * 28, max_pixels=4 * 28 * 28)
    return StreamingEngine(tiny_model, stream=stream, generation=generation)


def test_a_chunk_out_of_gpu_memory_fails_alone_and_the_session_goes_on(engine, monkeypatch, caplog):
    frames = [np.full((56, 56, 3), 90, np.uint8)] * 2
    real = core.engine.video_input
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(core.engine, "video_input", flaky)
    with GuardedSession(engine.start()) as session, caplog.at_level(logging.ERROR):
        first = session.push(frames, 0.0, 1.0)
        failed = session.push(frames, 1.0, 2.0)
        assert failed == [] and session.failed == 1
        assert "chunk 1.0-2.0s failed: the GPU ran out of memory" in session.last_failure
        after = session.push(frames, 2.0, 3.0)
        assert session.last_failure is None and after and after[0].start == 2.0
        assert first and session.last_stats.t_end == 3.0
    assert sum("ran out of memory" in r.message for r in caplog.records) == 1


def test_cuda_runtime_out_of_memory_is_out_of_memory_and_other_cuda_errors_are_not():
    """CUDA's own allocations (a stream, a handle) fail as `cudaErrorMemoryAllocation`, a runtime error
    rather than the allocator's; an illegal access is a broken context, not a chunk to skip."""
    from core.chunk_guard import is_out_of_memory

    assert is_out_of_memory(torch.OutOfMemoryError(OOM))
    assert is_out_of_memory(torch.AcceleratorError("CUDA error: out of memory"))
    assert not is_out_of_memory(
        torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
    )
    assert not is_out_of_memory(RuntimeError("CUDA error: out of memory"))  # not from torch's accelerator


def test_other_errors_pass_through(engine):
    with GuardedSession(engine.start()) as session, pytest.raises(ValueError, match="end after it starts"):
        session.push([np.zeros((56, 56, 3), np.uint8)] * 2, 1.0, 1.0)


def test_core_run_reports_the_failed_chunk_and_goes_on(tiny_dir, tmp_path, monkeypatch, caplog):
    jsonl = tmp_path / "out.jsonl"
    argv = ["run", "--source", str(CLIP), "--model", str(tiny_dir), "--device", "cpu", "--seed", "3",
            "--min-new-tokens", "3", "--duration", "5", "--jsonl", str(jsonl), "--quiet"]  # fmt: skip
    fail_call(monkeypatch, {2})
    with caplog.at_level(logging.ERROR):
        assert core_main(argv) == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "chunk 1.0-2.0s failed: the GPU ran out of memory" in errors[0], errors
    starts = [json.loads(line)["start"] for line in jsonl.read_text().splitlines()]
    assert 1.0 not in starts and max(starts) >= 3.0, starts  # the run went on after the failed chunk


def png(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, "PNG")
    return buffer.getvalue()


def send_chunk(ws, frames: list[np.ndarray], t_start: float) -> tuple[list[str], dict]:
    """One chunk over the wire: (its commentary texts, its chunk_done)."""
    ws.send(p.encode("chunk", t_start=t_start, t_end=t_start + 1.0, frames=len(frames)))
    for frame in frames:
        ws.send(png(frame))
    texts = []
    while True:
        message = p.decode(ws.recv(timeout=60), ("commentary", "chunk_done"))
        if message["type"] == "chunk_done":
            return texts, message
        texts.append(message["text"])


def test_the_server_fails_the_chunk_alone_and_another_session_is_unaffected(tiny_model, monkeypatch):
    generation = GenerationConfig(temperature=0.0, min_new_tokens=3, max_new_tokens=6)
    engine = StreamingEngine(tiny_model, stream=SMALL_STREAM, generation=generation)
    rng = np.random.default_rng(0)
    a_frames, b_frames = ([rng.integers(0, 256, (56, 56, 3), np.uint8)] * 2 for _ in range(2))
    with engine.start() as alone:  # what B says on a server that never fails
        expected = [alone.push(b_frames, t, t + 1.0)[0].text for t in (0.0, 1.0)]
    calls = fail_call(monkeypatch, {2})  # A's second chunk
    server = RunningServer(engine, max_sessions=2, budget=60.0)
    hello = p.encode("hello", version=p.VERSION)
    try:
        with connect(server.url, max_size=None) as a, connect(server.url, max_size=None) as b:
            for ws in (a, b):
                ws.send(hello)
                p.decode(ws.recv(timeout=30), ("ready",))
            first, done = send_chunk(a, a_frames, 0.0)
            assert first and "failed" not in done
            lost, done = send_chunk(a, a_frames, 1.0)
            assert lost == [] and not done["skipped"]
            assert "chunk 1.0-2.0s failed: the GPU ran out of memory" in done["failed"]
            b_texts = [send_chunk(b, b_frames, t) for t in (0.0, 1.0)]
            after, done = send_chunk(a, a_frames, 2.0)  # A's session goes on
            assert after and "failed" not in done
    finally:
        server.stop()
    assert calls["n"] == 5
    assert [texts for texts, _ in b_texts] == [[text] for text in expected]
    assert all("failed" not in done for _, done in b_texts)


def fill_gpu_memory(device) -> list[torch.Tensor]:
    """Ballast under a cap on this process's GPU memory (`set_per_process_memory_fraction`): tensors
    taking the free space left inside the blocks the allocator holds, so that anything more needs new
    memory, which the cap refuses. (Filling the GPU itself would also starve what CUDA allocates outside
    the allocator: streams, handles, graphs.)

    Sizes halve from 1 GiB to 512 B, each taken until the allocator refuses it: PyTorch keeps two pools,
    blocks for requests over 1 MiB (which no smaller request can use) and 2 MiB segments for the rest, so
    one size cannot fill both; 1 MiB + 512 B is the smallest request the large pool serves. (On the H200,
    pieces from 1 MiB down left 131 MB free in large blocks, and the chunk after them ran.)"""
    sizes = [2**k for k in range(30, 20, -1)] + [2**20 + 512] + [2**k for k in range(20, 8, -1)]
    ballast = []
    for size in sizes:
        while True:
            try:
                ballast.append(torch.empty(size, dtype=torch.uint8, device=device))
            except torch.OutOfMemoryError:
                break
    return ballast


def test_a_remote_session_reports_the_chunk_the_server_failed(tiny_model, monkeypatch, caplog):
    """`python -m core run --server` and the app hear a chunk the server failed: an error line, a count
    and the reason, and the session goes on."""
    from core.remote.client import RemoteSession

    generation = GenerationConfig(temperature=0.0, min_new_tokens=3, max_new_tokens=6)
    engine = StreamingEngine(tiny_model, stream=SMALL_STREAM, generation=generation)
    frames = [np.random.default_rng(1).integers(0, 256, (56, 56, 3), np.uint8)] * 2
    fail_call(monkeypatch, {2})
    server = RunningServer(engine, max_sessions=1, budget=60.0)
    try:
        with RemoteSession(server.url) as session, caplog.at_level(logging.ERROR):
            assert session.push(frames, 0.0, 1.0) and session.last_failure is None
            assert session.push(frames, 1.0, 2.0) == [] and session.failed == 1
            assert "chunk 1.0-2.0s failed: the GPU ran out of memory" in session.last_failure
            assert session.push(frames, 2.0, 3.0) and session.last_failure is None and session.failed == 1
    finally:
        server.stop()
    said = [r.getMessage() for r in caplog.records if r.name == "core.remote.client"]
    assert len(said) == 1 and said[0].startswith("the server: chunk 1.0-2.0s failed"), said


@pytest.mark.gpu
def test_a_real_out_of_memory_error_on_the_gpu_fails_one_chunk_alone(tiny_dir):
    """A cap on this process's GPU memory at what it holds, and ballast in the free space inside its
    blocks, make the next chunk's first allocation fail for real: that chunk fails, the session goes on
    as if it had never come, another session on the same scheduler is unaffected, and memory returns
    to its level."""
    from core.config import AccelerationConfig, CachePolicy
    from core.loading import load_model

    model = load_model(tiny_dir, device="cuda", dtype="float32")
    policy = CachePolicy(sink_tokens=6, text_window_tokens=10, vision_window_chunks=2, text_window_replies=3)
    greedy = GenerationConfig(temperature=0.0, max_new_tokens=6, min_new_tokens=3)
    plain = AccelerationConfig(compile=False, cuda_graphs=False, static_decode=False)
    frames = [random_frames(np.random.default_rng(seed), 84, 112) for seed in range(6)]

    def engine():
        return StreamingEngine(
            model,
            stream=SMALL_STREAM,
            cache=policy,
            generation=greedy,
            acceleration=plain,
            sessions=2,
            batched=True,
        )

    def replies(session, chunks):
        return [[c.text for c in session.push(frames[k], k, k + 1)] for k in chunks]

    with GuardedSession(engine().start()) as alone:
        expected = replies(alone, [0, 1, 3, 4, 5])  # the chunk that will fail left out
    shared = engine()
    device = model.device
    with GuardedSession(shared.start()) as a, GuardedSession(shared.start()) as b:
        got = replies(a, [0, 1])
        b_got = replies(b, [0, 1])
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        level = torch.cuda.memory_allocated(device)
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(torch.cuda.memory_reserved(device) / total, device)
        try:
            ballast = fill_gpu_memory(device)
            full = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device), len(ballast)
            with pytest.raises(torch.OutOfMemoryError):  # the ballast leaves no room: the premise of the test
                torch.empty(512, dtype=torch.uint8, device=device)
            lost = a.push(frames[2], 2, 3)
        finally:
            ballast = None
            torch.cuda.set_per_process_memory_fraction(1.0, device)
        assert a.failed == 1, f"no out-of-memory error: allocated, reserved, ballast tensors {full}"
        assert lost == [] and "ran out of memory" in a.last_failure
        assert torch.cuda.memory_allocated(device) <= level  # what the failed chunk held is given back
        b_got += replies(b, [2, 3, 4, 5])  # the other session never failed
        got += replies(a, [3, 4, 5])
    assert got == expected and b.failed == 0
    with GuardedSession(engine().start()) as alone:
        assert b_got == replies(alone, [0, 1, 2, 3, 4, 5])
