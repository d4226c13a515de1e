"""The server on a Ray Serve cluster (core/remote/cluster.py): a local Ray instance with 2 CPU replicas of the
tiny model, the real proxy, `RemoteSession` clients; the cluster CLI's refusals; no Ray without --cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import SMALL_STREAM, random_frames
from core.errors import ConfigError, StreamVLMError
from core.media.reconnect import Backoff
from serverhelpers import GREEDY

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def test_serve_without_cluster_imports_nothing_of_ray(tiny_dir):
    """The single server runs (it answers a session) with no module of Ray, FastAPI or Starlette loaded."""
    from livehelpers import free_port

    port = free_port()
    probe = textwrap.dedent(
        f"""
        import os, sys, threading, time
        from core.__main__ import main

        def check():
            from core.remote.client import RemoteSession
            deadline = time.monotonic() + 120
            while True:
                try:
                    RemoteSession("ws://127.0.0.1:{port}", reconnect=None).close()
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        os._exit(3)
                    time.sleep(0.2)
            loaded = sorted({{m.split(".")[0] for m in sys.modules}} & {{"ray", "fastapi", "starlette"}})
            print("loaded:", loaded, flush=True)
            os._exit(0)

        threading.Thread(target=check, daemon=True).start()
        main(["serve", "--model", {str(tiny_dir)!r}, "--device", "cpu", "--port", "{port}"])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loaded: []" in done.stdout


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--replicas", "2"], "--address and --replicas are for a cluster; add --cluster"),
        (["--address", "auto"], "--address and --replicas are for a cluster; add --cluster"),
        (
            ["--cluster", "--replicas", "0"],
            "--replicas: must be a whole number >= 1 and <= 1024 (got 0), or auto",
        ),
        (["--cluster", "--replicas", "two"], "--replicas"),
        (["--cluster", "--host", "0.0.0.0"], "refusing to listen on 0.0.0.0 without a token"),
    ],
)
def test_cluster_flags_are_checked_with_one_line_errors(tiny_dir, flags, words):
    from livehelpers import free_port

    port = ["--port", str(free_port())]  # not the default: a server on this machine may hold it
    done = subprocess.run(
        [sys.executable, "-m", "core", "serve", "--model", str(tiny_dir), "--device", "cpu", *port, *flags],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("error: ") or "\nerror: " in done.stderr, done.stderr[-2000:]
    assert words in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "device, replicas, gpus, cpus, placed",
    [
        ("auto", "auto", 2, 32, (2, 1)),  # one replica per GPU
        ("cuda", 3, 8, 32, (3, 1)),
        ("auto", 2, 0, 4, (2, 0)),  # no GPUs: replicas on CPUs
        ("cpu", 2, 8, 4, (2, 0)),
    ],
)
def test_replicas_are_placed_one_per_gpu_or_on_cpus(device, replicas, gpus, cpus, placed):
    cluster = pytest.importorskip("core.remote.cluster", exc_type=ImportError)
    assert cluster.placement(device, replicas, gpus, cpus) == placed


@pytest.mark.parametrize(
    "device, replicas, gpus, cpus, words",
    [
        ("auto", 3, 2, 32, "--replicas 3 needs 3 GPUs, one per replica; the Ray cluster has 2"),
        ("cpu", "auto", 2, 32, "--replicas auto starts one replica per GPU"),
        ("auto", "auto", 0, 32, "--replicas auto starts one replica per GPU"),
        ("cuda", 1, 0, 32, "--device cuda, but the Ray cluster has no GPUs"),
        ("cuda:1", 1, 2, 32, "--device cuda:1 names one GPU"),
        ("cpu", 5, 0, 4, "--replicas 5 needs 5 CPUs"),
    ],
)
def test_a_placement_the_cluster_cannot_make_is_refused(device, replicas, gpus, cpus, words):
    cluster = pytest.importorskip("core.remote.cluster", exc_type=ImportError)
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        cluster.placement(device, replicas, gpus, cpus)


@pytest.fixture(scope="module")
def two_replicas(tiny_dir):
    from clusterhelpers import LocalCluster
    from livehelpers import free_port

    running = LocalCluster(
        tiny_dir, replicas=2, port=free_port(), token="s3cret", max_sessions=6, budget=30.0
    )
    yield running
    running.stop()


@pytest.mark.parametrize(
    "bad, code",
    [
        ("{not json", 4004),
        (json.dumps({"type": "chunk", "t_start": "x"}), 4004),
        (b"\x00" * (8 * 2**20 + 10), 1009),  # over the frame limit, under the proxy's own (16 MiB)
        (b"\x89PNG", 1003),  # binary where a chunk's header was due
    ],
)
def test_a_bad_client_gets_the_single_servers_close_and_the_others_go_on(two_replicas, bad, code):
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from core.remote import protocol as p
    from core.remote.client import RemoteSession

    url = two_replicas.cluster.url
    frames = random_frames(np.random.default_rng(1), 56, 56)
    with RemoteSession(url, token="s3cret", reconnect=None) as steady:
        steady.push(frames, 0, 1)
        with connect(url, max_size=None) as ws:
            ws.send(p.encode("hello", version=p.VERSION, token="s3cret"))
            p.decode(ws.recv(timeout=30), ("ready",))
            ws.send(bad)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == code, closed.value
        assert closed.value.rcvd.reason  # a reason that names the problem
        steady.push(frames, 1, 2)  # the other session went on
        assert steady.reconnects == 0


def test_sessions_spread_over_two_replicas_and_survive_one_being_killed(two_replicas, tiny_model):
    """4 sessions over 2 replicas, each with a local session's greedy tokens; one replica's process is
    SIGKILLed mid-stream: its sessions continue on the other within 10 s, re-seeded with their text so far
    (a local session started with that text gives the same tokens), and new sessions are served after."""
    from core.engine import StreamingEngine
    from core.remote.client import RemoteSession

    url = two_replicas.cluster.url

    def local(previous_text: str = ""):
        engine = StreamingEngine(tiny_model, stream=SMALL_STREAM, generation=GREEDY)
        return engine.start(previous_text=previous_text, seed=0)

    rng = np.random.default_rng(7)
    chunks = [random_frames(rng, 56, 84) for _ in range(4)]
    quick = Backoff(initial=0.1, factor=2.0, cap=0.5, give_up_after=30.0)
    texts = [f"Match {i}" for i in range(4)]
    remotes = [
        RemoteSession(url, token="s3cret", previous_text=t, seed=0, image_format="png", reconnect=quick)
        for t in texts
    ]
    locals_ = [local(t) for t in texts]
    try:
        for k in range(2):
            for remote, mine in zip(remotes, locals_):
                assert remote.push(chunks[k], k, k + 1) == mine.push(chunks[k], k, k + 1)
        placed = [remote.replica for remote in remotes]
        assert len(set(placed)) == 2 and None not in placed, placed  # both replicas carry sessions
        assert any(remote.commentary for remote in remotes), (
            "the tiny model said nothing; nothing carried over"
        )

        victim = placed[0]
        pids = two_replicas.replica_pids()
        assert set(pids) == set(placed), (pids, placed)
        os.kill(pids[victim], signal.SIGKILL)
        killed = time.monotonic()
        for text, remote, mine in zip(texts, remotes, locals_):
            moved = remote.replica == victim
            said = [c.text for c in remote.commentary]
            carried = remote.resume_text  # what a new session is seeded with: its text and all commentary
            events = remote.push(chunks[2], 2, 3)
            if moved:
                assert time.monotonic() - killed < 10.0
                assert remote.reconnects == 1 and remote.replica not in (victim, None)
                assert carried.startswith(text) and all(line in carried for line in said)
                assert events == local(carried).push(chunks[2], 2, 3)
            else:
                assert remote.reconnects == 0 and events == mine.push(chunks[2], 2, 3)

        with RemoteSession(url, token="s3cret", seed=0, image_format="png", reconnect=None) as fresh:
            assert fresh.push(chunks[3], 0, 1) == local().push(chunks[3], 0, 1)
        with pytest.raises(StreamVLMError, match=r"missing or wrong token \(code 1008\)"):
            RemoteSession(url, token="wrong", reconnect=None)
    finally:
        for remote in remotes:
            remote.close()

    # Serve's controller replaces the dead replica with a new one.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        pids = two_replicas.replica_pids()
        if len(pids) == 2 and victim not in pids:
            break
        time.sleep(1.0)
    assert len(pids) == 2 and victim not in pids, pids
