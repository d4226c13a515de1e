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
            "streaming,none,stock",
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
    for policy in ("streaming", "none", "stock"):
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
    stock = [r["cached_tokens"] for r in data["chunks"] if r["policy"] == "stock"]
    assert stock == growing  # stock generate caches exactly what the engine does without eviction
    summary = {s["policy"]: s for s in data["summary"]}
    assert summary["streaming"]["status"] == "ok" and summary["streaming"]["realtime_factor"] > 0


def test_stock_baseline_streams_the_engines_tokens(tiny_model):
    """Stock `generate` over a growing cache does the same work as the engine without eviction:
    with greedy decoding (and no repetition penalty, whose window differs) the token streams match."""
    import numpy as np

    from conftest import SMALL_STREAM, random_frames
    from core.config import CachePolicy, GenerationConfig
    from core.engine import StreamingEngine
    from evals.stock import StockStream

    greedy = GenerationConfig(temperature=0.0, max_new_tokens=6, repetition_penalty=1.0)
    stock = StockStream(tiny_model, SMALL_STREAM, greedy, previous_text="Blue against red.")
    engine = StreamingEngine(
        tiny_model, stream=SMALL_STREAM, cache=CachePolicy(mode="none"), generation=greedy
    ).start(previous_text="Blue against red.")
    rng = np.random.default_rng(5)
    for k in range(8):
        frames = random_frames(rng, 56, 84)
        assert stock.push(frames, k, k + 1) == engine.push(frames, k, k + 1)
        assert stock.last_stats.cached_tokens == engine.cache.length
        assert stock.last_stats.prefill_ms > 0 and stock.last_stats.vision_ms > 0
    cached = engine.cache.token_ids()
    assert stock.ids[: len(cached)] == cached
    assert len(set(cached)) > 10  # a real stream of varied tokens, not one repeated id
    # The engine's attention functions are back in place after each stock chunk.
    assert tiny_model.attention_backend == "streamvlm_causal"


def test_stock_out_of_memory_probe_runs_chunks_at_later_cache_lengths(tiny_model):
    import numpy as np

    from conftest import SMALL_STREAM, random_frames
    from core.config import GenerationConfig
    from evals.stock import StockStream, probe_out_of_memory

    stock = StockStream(
        tiny_model, SMALL_STREAM, GenerationConfig(max_new_tokens=3, min_new_tokens=3, seed=0)
    )
    rng = np.random.default_rng(0)
    for k in range(4):
        stock.push(random_frames(rng, 56, 56), k, k + 1)
    per_second = stock.cache.get_seq_length() / 4
    records = probe_out_of_memory(stock, random_frames(rng, 56, 56), start_seconds=4, limit_seconds=20)
    assert [r["seconds"] for r in records] == [6.0, 9.0, 13.5]
    assert all(r["ok"] and r["total_ms"] > 0 for r in records)
    tokens = [r["tokens"] for r in records]
    assert tokens == sorted(tokens) and tokens[-1] > 13 * per_second * 0.9


def test_factors_and_out_of_memory_status_read_the_rows_and_probes():
    from evals.efficiency import _factors, oom_status

    rows = [{"policy": "streaming", "t_end": float(t), "total_ms": 200.0} for t in range(1, 211)]
    rows += [{"policy": "stock", "t_end": float(t), "total_ms": 4.0 * t + 100} for t in range(1, 211)]
    factors = {(f["policy"], f["seconds"]): f["factor"] for f in _factors(rows, ["streaming", "stock"])}
    assert factors == {("stock", 100): 2.5, ("stock", 200): 4.5}  # medians of t = 95..105 and 195..205
    probes = [
        {"seconds": 300, "ok": True},
        {"seconds": 1012, "ok": False},
        {"seconds": 928, "ok": True},
        {"seconds": 970, "ok": False},
    ]
    assert oom_status(probes, 200) == "out of memory between 928 and 970 s (probed)"
    assert oom_status(probes[:1], 200) == "no out of memory up to 300 s (probed)"


def test_stock_replies_hold_no_vision_tokens(tiny_model):
    """Stock transformers reads every <|video_pad|> in the ids as a video's: a reply that drew one (the
    random model does, sampling after torch.manual_seed(27)) broke the next chunk's video count."""
    import numpy as np
    import torch

    from conftest import SMALL_STREAM, random_frames
    from core.config import GenerationConfig
    from evals.stock import StockStream

    torch.manual_seed(27)
    stock = StockStream(
        tiny_model, SMALL_STREAM, GenerationConfig(max_new_tokens=3, min_new_tokens=3, seed=0)
    )
    rng = np.random.default_rng(0)
    vision = {tiny_model.special.video_pad, tiny_model.special.vision_start, tiny_model.special.vision_end}
    for k in range(4):
        stock.push(random_frames(rng, 56, 56), k, k + 1)
        assert not vision & set(stock.last_reply)
