"""The server on an engine with a cache pool and batched decode steps: sessions run at once, each
gets the tokens it gets alone, admission follows the pool's slots, and every slot comes back."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from conftest import SMALL_STREAM, random_frames
from core.config import CachePolicy
from core.engine import StreamingEngine
from core.errors import StreamVLMError
from core.remote import protocol as p
from core.remote.client import RemoteSession
from serverhelpers import GREEDY, RunningServer, no_sessions_left

POLICY = CachePolicy(sink_tokens=6, text_window_tokens=10, vision_window_chunks=2, text_window_replies=3)
PREVIOUS = ["Blue against red.", "Cup final, rain.", ""]


def engine(model, sessions: int) -> StreamingEngine:
    return StreamingEngine(
        model, stream=SMALL_STREAM, cache=POLICY, generation=GREEDY, sessions=sessions, batched=True
    )


def test_concurrent_remote_sessions_get_their_solo_commentary(tiny_model):
    chunks = [[random_frames(np.random.default_rng(10 * i + k), 56, 84) for k in range(6)] for i in range(3)]
    expected = []
    for i in range(3):
        with StreamingEngine(tiny_model, stream=SMALL_STREAM, cache=POLICY, generation=GREEDY).start(
            previous_text=PREVIOUS[i], seed=0
        ) as local:
            expected.append([local.push(frames, k, k + 1) for k, frames in enumerate(chunks[i])])
    batched = engine(tiny_model, 3)
    running = RunningServer(batched)
    got: list = [None] * 3
    errors: list = []

    def client(i: int) -> None:
        try:
            with RemoteSession(running.url, previous_text=PREVIOUS[i], seed=0, image_format="png") as remote:
                got[i] = [remote.push(frames, k, k + 1) for k, frames in enumerate(chunks[i])]
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors
        assert got == expected
        assert batched.scheduler.decode.rows > batched.scheduler.decode.batches  # the sessions' steps were batched
        assert no_sessions_left(running) and batched.pool.in_use == 0
    finally:
        running.stop()


def test_the_pool_sets_how_many_sessions_the_server_admits(tiny_model):
    running = RunningServer(engine(tiny_model, 1), max_sessions=50)  # the pool's 1 slot wins
    try:
        assert running.server.max_sessions == 1
        with RemoteSession(running.url):
            with pytest.raises(StreamVLMError, match=r"the server is full: it has room for 1 sessions.*4002"):
                RemoteSession(running.url)
        assert no_sessions_left(running)
        RemoteSession(running.url).close()  # the slot came back
    finally:
        running.stop()


def test_a_session_closed_mid_reply_frees_its_cache_slot(tiny_model):
    """A client that sends a chunk and disconnects while the model is on it: its slot comes back."""
    from websockets.sync.client import connect

    from core.remote.client import _encode_image

    batched = engine(tiny_model, 2)
    running = RunningServer(batched)
    try:
        for _ in range(3):
            with connect(running.url) as ws:
                ws.send(p.encode("hello", version=p.VERSION, previous_text="x"))
                assert '"ready"' in ws.recv(timeout=30)
                ws.send(p.encode("chunk", t_start=0.0, t_end=1.0, frames=2))
                for frame in random_frames(np.random.default_rng(0), 56, 84):
                    ws.send(_encode_image(frame, "png"))
                time.sleep(0.01)  # the chunk is on the model now (or about to be); then the client leaves
            assert no_sessions_left(running)
            deadline = time.monotonic() + 10
            while batched.pool.in_use and time.monotonic() < deadline:
                time.sleep(0.05)
            assert batched.pool.in_use == 0
    finally:
        running.stop()
