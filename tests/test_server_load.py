"""Load: 8 clients stream 60 s each into one server with the tiny model (`python -m evals server-load`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_eight_clients_for_sixty_seconds_are_all_served(tiny_dir, tmp_path):
    budget = 2.0
    done = subprocess.run(
        [sys.executable, "-m", "evals", "server-load", "--model", str(tiny_dir), "--device", "cpu"]
        + ["--clients", "8", "--seconds", "60", "--latency-budget", str(budget), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert [c["client"] for c in report["clients"]] == list(range(8)) and report["starved"] == []
    for client in report["clients"]:
        assert client["error"] is None and client["chunks"] == 60
        assert client["served"] >= 0.9 * (client["chunks"] - client["skipped"])  # nobody starves
        # Latency stays bounded: a chunk waits at most the budget, then runs (or is skipped).
        assert client["max_ms"] < (budget + 2.0) * 1000
    assert len(report["latencies_s"]["0"]) == 60
    summary = (tmp_path / "summary.md").read_text()
    assert summary.count("\n| ") == 9 and "8 clients x 60 s" in summary  # header row + one per client
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
