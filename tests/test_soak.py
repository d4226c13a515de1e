"""`python -m evals soak`: its verdict on samples, and a short run end to end with the tiny model."""

from __future__ import annotations

import json

from evals.__main__ import main
from evals.soak import judge


def sample(stream_s: float, rss: float, fds: int = 11, tokens: int = 3300, position: int = 1800) -> dict:
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
    }


def test_the_verdict_names_each_kind_of_growth_after_warm_up():
    flat = [sample(100, 500), sample(600, 800), sample(1200, 805), sample(1800, 801)]
    assert judge(flat, 600, 2.0, 128_000)["ok"]
    grown = [sample(600, 800), sample(1800, 830, fds=14, tokens=3500, position=2100)]
    reasons = " ".join(judge(grown, 600, 2.0, 2000)["reasons"])
    for words in ("RSS grew 3.75%", "fds grew", "cached tokens varied", "positions grew", "passed the model"):
        assert words in reasons


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
    # An output folder that holds something is refused, not overwritten.
    assert main([*args, "--device", "cpu", "--out", str(out)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
