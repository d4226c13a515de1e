"""Load: client processes streaming into one server with the tiny model (`python -m evals server-load`),
the server's per-chunk `timing` in `chunk_done`, and what `RemoteSession` sends (JPEG, `push_images`)."""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from websockets.sync.server import serve

from core.remote import protocol as p

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("queue_ms", "vision_ms", "evict_ms", "prefill_ms", "decode_ms", "total_ms")


def server_load(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "evals", "server-load", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )


class FakeServer:
    """A bare WebSocket server speaking just enough of the protocol: `ready`, then for each chunk it keeps
    the frames' bytes as received and answers `chunk_done` with `done` (no commentary, or `lines` lines).
    With `replicas`, its `ready`s name them in turn, as a cluster's replicas would."""

    def __init__(self, *, replicas: tuple = (), lines: int = 0, **done) -> None:
        self.done, self.lines = done, lines
        self.replicas = itertools.cycle(replicas) if replicas else None
        self.chunks: list[tuple[dict, list[bytes]]] = []
        self.server = serve(self.handle, "127.0.0.1", 0, max_size=p.MAX_IMAGE_BYTES)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"ws://127.0.0.1:{self.server.socket.getsockname()[1]}"

    def handle(self, ws) -> None:
        p.decode(ws.recv(timeout=10), ("hello",))
        where = {"replica": next(self.replicas)} if self.replicas else {}
        ws.send(
            p.encode(
                "ready", version=p.VERSION, session=1, max_image_bytes=p.MAX_IMAGE_BYTES, config={}, **where
            )
        )
        for message in ws:
            header = p.decode(message, ("chunk",))
            images = [ws.recv(timeout=10) for _ in range(header["frames"])]
            self.chunks.append((header, images))
            for _ in range(self.lines):
                ws.send(p.encode("commentary", start=header["t_start"], end=header["t_end"], text="a line"))
            fields = {
                "t_start": header["t_start"],
                "t_end": header["t_end"],
                "skipped": False,
                "latency": 0.01,
            }
            ws.send(p.encode("chunk_done", **fields, **self.done))

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(10)


def test_three_client_processes_are_all_served_and_get_the_servers_timing(tiny_dir, tmp_path):
    done = server_load(
        *("--model", str(tiny_dir), "--device", "cpu", "--clients", "3", "--seconds", "3"),
        *("--out", str(tmp_path)),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    (level,) = report["levels"]
    assert level["clients"] == 3 and level["starved"] == [] and report["starved"] == {}
    pids = [c["pid"] for c in level["per_client"]]
    # Each client ran in a process of its own: neither this test's nor the server's, nor another client's.
    assert len(set(pids)) == 3 and not {os.getpid(), report["server_pid"]} & set(pids)
    for client in level["per_client"]:
        assert client["error"] is None and client["chunks"] == 3 and client["served_share"] >= 0.9
    chunks = [c for records in level["chunks"].values() for c in records]
    assert len(chunks) == 9
    for chunk in chunks:
        assert chunk["latency_ms"] > 0 and not chunk["skipped"]
        assert set(chunk["timing"]) == set(STAGES) and min(chunk["timing"].values()) >= 0
        # The server's time for the chunk is within what the client waited for it.
        assert chunk["timing"]["total_ms"] <= chunk["latency_ms"]
    summary = level["summary"]
    for stage in STAGES:
        assert summary[f"median_{stage}"] is not None and summary[f"median_{stage}"] >= 0
    assert summary["chunks"] == 9 and summary["stream_s_per_s"] > 0
    table = (tmp_path / "summary.md").read_text()
    for column in ("p50 ms", "p99 ms", "queue ms", "vision ms", "prefill ms", "decode ms", "stream-s per s"):
        assert column in table


def test_a_sweep_runs_every_level_against_one_server_and_plots_them(tiny_dir, tmp_path):
    done = server_load(
        *("--model", str(tiny_dir), "--device", "cpu", "--clients", "1,2", "--seconds", "2"),
        *("--out", str(tmp_path)),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert [level["clients"] for level in report["levels"]] == [1, 2]
    for level in report["levels"]:
        assert level["summary"]["chunks"] == 2 * level["clients"] == len(level["per_client"]) * 2
        assert all(len(records) == 2 for records in level["chunks"].values())
    table = (tmp_path / "summary.md").read_text()
    assert "\n| 1 | 2 |" in table and "\n| 2 | 4 |" in table  # a row per level: clients, chunks
    assert (tmp_path / "latency.png").stat().st_size > 5000


def test_a_skipped_chunks_timing_has_only_its_wait_and_total():
    from core.engine import ChunkStats
    from core.remote.server import chunk_timing

    assert chunk_timing(0.25, 0.2505) == {"queue_ms": 250.0, "total_ms": 250.5}
    stats = ChunkStats(0, 1, 4.0, 0.5, 2.0, 9.0, 10, 20, 3, 100, 100.0, 0)
    assert chunk_timing(0.001, 0.02, stats) == {
        "queue_ms": 1.0,
        "vision_ms": 4.0,
        "evict_ms": 0.5,
        "prefill_ms": 2.0,
        "decode_ms": 9.0,
        "total_ms": 20.0,
    }


def test_the_client_sends_jpeg_by_default_and_push_images_sends_the_bytes_given():
    from PIL import Image

    from core.remote.client import RemoteSession

    # A field this client does not know is ignored (as older clients ignore `timing`).
    fake = FakeServer(timing={"queue_ms": 1.5, "total_ms": 2.0}, from_the_future={"x": 1})
    try:
        with RemoteSession(fake.url) as session:
            assert session.image_format == "jpeg"
            frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
            assert session.push([frame, frame], 0, 1) == []
            assert session.last_timing == {"queue_ms": 1.5, "total_ms": 2.0}
            given = [b"\xff\xd8 not really a jpeg", bytes(range(256))]
            session.push_images(given, 1, 2)
            with pytest.raises(ValueError, match="must end after it starts"):
                session.push_images(given, 3, 3)
    finally:
        fake.stop()
    (first, jpegs), (second, sent) = fake.chunks
    assert first["frames"] == 2 and [Image.open(io.BytesIO(j)).format for j in jpegs] == ["JPEG", "JPEG"]
    assert second == {"type": "chunk", "t_start": 1.0, "t_end": 2.0, "frames": 2} and sent == given


def test_a_starved_client_fails_the_run_with_one_line(tmp_path, capsys):
    from evals.__main__ import main

    fake = FakeServer()  # answers every chunk, never with commentary
    try:
        status = main(
            ["server-load", "--url", fake.url, "--clients", "2", "--seconds", "1", "--out", str(tmp_path)]
        )
    finally:
        fake.stop()
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert status == 1 and len(errors) == 1 and "starved" in errors[0] and "2 clients: [0, 1]" in errors[0]
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["starved"] == {"2": [0, 1]} and report["levels"][0]["summary"]["served"] == 0


def test_the_report_says_which_replica_of_a_cluster_served_each_client(tmp_path, capsys):
    from evals.__main__ import main

    fake = FakeServer(replicas=("r-a", "r-b"), lines=1)  # a cluster's two replicas, taking clients in turn
    try:
        status = main(
            ["server-load", "--url", fake.url, "--clients", "4", "--seconds", "1", "--out", str(tmp_path)]
        )
    finally:
        fake.stop()
    assert status == 0, capsys.readouterr().err[-2000:]
    (level,) = json.loads((tmp_path / "results.json").read_text())["levels"]
    assert level["summary"]["replicas"] == {"r-a": 2, "r-b": 2}
    assert sorted(c["replica"] for c in level["per_client"]) == ["r-a", "r-a", "r-b", "r-b"]
    summary = (tmp_path / "summary.md").read_text()
    assert "Clients per replica: `r-a` 2, `r-b` 2." in summary
    assert "| max ms | replica |" in summary and summary.count(" r-a |") == 2


@pytest.mark.parametrize("replicas, seen", [((), None), ((7,), None), (("r-1",), "r-1")])
def test_a_ready_without_a_replica_or_with_a_malformed_one_leaves_it_unknown(replicas, seen):
    """A single server sends no `replica`; one that is not a string is ignored as an unknown field would be."""
    from core.remote.client import RemoteSession

    fake = FakeServer(replicas=replicas)
    try:
        with RemoteSession(fake.url, reconnect=None) as session:
            assert session.replica == seen
            session.push_images([b"\xff\xd8"], 0, 1)  # the session works either way
    finally:
        fake.stop()


def test_a_single_servers_report_has_no_replica_column(tmp_path):
    from evals.server_load import ClientResult, level_summary, markdown

    results = [ClientResult(0, chunks=1, served=1, latencies=[0.1])]
    summary = level_summary(results)
    assert summary["replicas"] == {}
    table = markdown([{"clients": 1, "summary": summary, "per_client": []}], "header")
    assert "replica" not in table


@pytest.mark.slow
def test_eight_clients_for_thirty_seconds_are_all_served(tiny_dir, tmp_path):
    budget = 2.0
    done = server_load(
        *("--model", str(tiny_dir), "--device", "cpu", "--clients", "8", "--seconds", "30"),
        *("--latency-budget", str(budget), "--out", str(tmp_path)),
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    (level,) = report["levels"]
    assert [c["client"] for c in level["per_client"]] == list(range(8)) and report["starved"] == {}
    for client in level["per_client"]:
        assert client["error"] is None and client["chunks"] == 30
        assert client["served"] >= 0.9 * (client["chunks"] - client["skipped"])  # nobody starves
        # Latency stays bounded: a chunk waits at most the budget, then runs (or is skipped).
        assert client["max_ms"] < (budget + 2.0) * 1000
    assert all(len(records) == 30 for records in level["chunks"].values())
    summary = (tmp_path / "summary.md").read_text()
    assert "8 clients x 30 s" in summary and "\n| 8 | 240 |" in summary
    assert summary.count("\n| ") == 2 + 9  # the level table (header, one row), the clients' (header, 8)
    assert (tmp_path / "latency.png").stat().st_size > 5000
    print(summary)


def test_an_overloaded_server_skips_chunks_instead_of_queueing_them(tiny_model):
    from conftest import SMALL_STREAM
    from core.engine import StreamingEngine
    from core.remote.server import InferenceServer, ServerThread
    from evals.server_load import run_load

    # A budget shorter than one chunk's work: whoever waits behind another client's chunk is skipped.
    server = InferenceServer(StreamingEngine(tiny_model, stream=SMALL_STREAM), max_sessions=4, budget=0.01)
    running = ServerThread(server)
    try:
        results = run_load(running.url, clients=4, seconds=4, frame_size=(56, 56))
    finally:
        running.stop()
    assert all(r.error is None and r.chunks == 4 for r in results)
    assert sum(r.skipped for r in results) > 0
    assert sum(r.chunks - r.skipped for r in results) > 0  # the model still works through some
    records = [c for r in results for c in r.records]
    # A skipped chunk's timing is its wait and its total; an answered one's has the model's split too.
    assert {tuple(c["timing"]) for c in records if c["skipped"]} == {("queue_ms", "total_ms")}
    assert {tuple(c["timing"]) for c in records if not c["skipped"]} == {STAGES}


def test_a_server_slower_than_its_budget_still_answers_a_lone_client(tiny_model):
    from conftest import SMALL_STREAM
    from core.engine import StreamingEngine
    from core.remote.server import InferenceServer, ServerThread
    from evals.server_load import run_load

    # Every chunk takes longer than 0.001 s: skipping all of them would leave the client with nothing.
    server = InferenceServer(StreamingEngine(tiny_model, stream=SMALL_STREAM), budget=0.001)
    running = ServerThread(server)
    try:
        (result,) = run_load(running.url, clients=1, seconds=4, frame_size=(56, 56))
    finally:
        running.stop()
    assert result.error is None and result.chunks == 4 and result.skipped == 0
