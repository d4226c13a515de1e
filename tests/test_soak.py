"""`python -m evals soak`: its verdict on samples, and a short run end to end with the tiny model."""

from __future__ import annotations

import json

from evals.__main__ import main
from evals.soak import judge


def sample(
    stream_s: float, rss: float, fds: int = 11, tokens: int = 3300, position: int = 1800, ms: float = 180.0
) -> dict:
    return {
        "chunk": int(stream_s),
        "stream_s": stream_s,
        "rss_mib": rss,
        "fds": fds,
        "threads": 2,
        "os_threads": 10,
        "cached_tokens": tokens,
        "max_position": position,
        "gpu_mib": None,
        "chunk_ms": ms,
    }


def test_the_verdict_names_each_kind_of_growth_after_warm_up():
    flat = [sample(100, 500), sample(600, 800), sample(1200, 805), sample(1800, 801)]
    assert judge(flat, 600, 2.0, 128_000)["ok"]
    grown = [sample(600, 800), sample(1800, 830, fds=14, tokens=3500, position=2100)]
    reasons = " ".join(judge(grown, 600, 2.0, 2000)["reasons"])
    for words in ("RSS grew 3.75%", "fds grew", "cached tokens varied", "positions grew", "passed the model"):
        assert words in reasons


def test_the_verdict_compares_the_chunk_time_of_the_first_and_last_windows():
    def run(times: list[float]) -> dict:
        # warm-up to 60 s (its own chunk time, slow: compiling, left out), then a sample a minute
        samples = [sample(60, 800, ms=900.0)] + [
            sample(60 + 60 * (k + 1), 800, ms=t) for k, t in enumerate(times)
        ]
        return judge(samples, 60, 2.0, 128_000, time_tolerance=2.0, time_window=600)

    flat = run([180.0] * 10 + [181.0] * 20 + [182.0] * 10)  # +1.1% from the first 10 min to the last
    assert flat["ok"] and flat["chunk_ms_first_window"] == 180.0 and flat["chunk_time_change_pct"] == 1.11
    creeping = run([180.0] * 10 + [185.0] * 20 + [190.0] * 10)
    assert not creeping["ok"]
    assert "chunk time grew 5.6% from the first to the last 600 s" in creeping["reasons"][0]
    assert run([190.0] * 10 + [180.0] * 30)["ok"]  # faster at the end (a switch to compiled code) is no leak
    short = run([180.0] * 5 + [400.0] * 5)  # under two windows after warm-up: nothing to compare
    assert short["ok"] and short["chunk_time_change_pct"] is None


def test_a_short_soak_writes_its_outputs(tiny_dir, tmp_path, capsys):
    out = tmp_path / "soak"
    args = ["soak", "--model", str(tiny_dir), "--seconds", "40", "--every", "10", "--warmup", "20"]
    # 40 s is inside the cache's own warm-up (its windows fill over minutes), so the verdict may fail.
    assert main([*args, "--device", "cpu", "--out", str(out)]) in (0, 1)
    results = json.loads((out / "results.json").read_text())
    assert results["verdict"]["rss_growth_pct"] is not None
    assert [s["chunk"] for s in results["samples"]] == [10, 20, 30, 40]
    assert (out / "soak.png").is_file() and (out / "soak.mp4").stat().st_size > 0
    assert len((out / "soak.jsonl").read_text().splitlines()) == 40
    # each sample also went to samples.jsonl as it was taken (what a run cut short leaves)
    partial = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert partial == results["samples"]
    # An output folder that holds something is refused, not overwritten.
    assert main([*args, "--device", "cpu", "--out", str(out)]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_random_weights_are_built_in_memory_without_a_folder(tmp_path):
    out = tmp_path / "soak"
    args = [
        "soak",
        "--random-weights",
        "tiny",
        "--seconds",
        "6",
        "--every",
        "3",
        "--warmup",
        "3",
        "--no-record",
    ]
    assert main([*args, "--device", "cpu", "--out", str(out)]) in (0, 1)
    results = json.loads((out / "results.json").read_text())
    assert [s["chunk"] for s in results["samples"]] == [3, 6] and results["meta"]["config"][
        "weights_dir"
    ] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["soak"]  # no weights written anywhere here
