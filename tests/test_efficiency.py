"""`python -m evals efficiency` on the CPU with the tiny model: a short stream, every output checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [
    "policy",
    "vision ms",
    "evict ms",
    "prefill ms",
    "decode ms",
    "ms/token",
    "total ms",
    "cached tokens",
    "peak GiB",
    "x real time",
    "status",
]


def test_efficiency_benchmark_runs_and_reports(tmp_path):
    config = tmp_path / "small.toml"
    config.write_text(
        "[cache]\nsink_tokens = 8\ntext_window_tokens = 8\nvision_window_chunks = 3\ntext_window_replies = 3\n"
    )
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "evals",
            "efficiency",
            "--random-weights",
            "tiny",
            "--seconds",
            "14",
            "--resolution",
            "112x112",
            "--tokens",
            "4",
            "--policies",
            "streaming,none",
            "--config",
            str(config),
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    table = (out / "table.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| policy"))
    assert [c.strip() for c in header.strip("|").split("|")][: len(COLUMNS) - 4] == COLUMNS[:7]
    for column in COLUMNS:
        assert column in header
    assert (out / "latency_memory.png").stat().st_size > 10_000

    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["tokens_per_chunk"] == 4 and data["meta"]["model"] == "random-tiny"
    for policy in ("streaming", "none"):
        rows = [r for r in data["chunks"] if r["policy"] == policy]
        assert len(rows) == 14
        for row in rows:
            assert row["new_tokens"] == 4
            for key in ("vision_ms", "prefill_ms", "decode_ms", "total_ms", "peak_memory_gib"):
                assert row[key] > 0, (policy, key, row)
    streaming = [r["cached_tokens"] for r in data["chunks"] if r["policy"] == "streaming"]
    growing = [r["cached_tokens"] for r in data["chunks"] if r["policy"] == "none"]
    # Flat once the small windows are full: only reply and time-label lengths wiggle, by a few tokens.
    assert max(streaming[-8:]) - min(streaming[-8:]) <= 12
    memory = [r["peak_memory_gib"] for r in data["chunks"] if r["policy"] == "streaming"]
    assert max(memory[-8:]) - min(memory[-8:]) < 0.05  # GiB of process memory
    assert growing == sorted(growing) and growing[-1] > 2 * streaming[-1]
    summary = {s["policy"]: s for s in data["summary"]}
    assert summary["streaming"]["status"] == "ok" and summary["streaming"]["realtime_factor"] > 0
