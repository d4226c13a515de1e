"""`python -m evals startup` on the CPU with tiny random weights: fresh processes, cold then warm."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from clihelpers import ROOT, assert_one_error_line, run_main
from evals.__main__ import main as evals_main
from evals.startup import HEADER, timeline


def test_startup_benchmark_times_fresh_processes_cold_then_warm(tmp_path):
    out, weights, caches = tmp_path / "out", tmp_path / "weights", tmp_path / "caches"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "evals",
            "startup",
            "--random-weights",
            "tiny",
            "--weights-dir",
            str(weights),
            "--compile-cache",
            str(caches),
            "--chunks",
            "2",
            "--warm",
            "1",
            "--resolution",
            "64x64",
            "--tokens",
            "3",
            "--device",
            "cpu",
            "--dtype",
            "bfloat16",  # not the CPU's default (float32): the runs must load as asked
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
    assert (weights / "config.json").is_file() and list(weights.glob("*.safetensors"))
    data = json.loads((out / "results.json").read_text())
    assert [(r["run"], r["cache"]) for r in data["runs"]] == [(1, "cold"), (2, "warm")]
    for r in data["runs"]:
        assert 0 < r["python_s"] < r["loaded_s"] < r["first_chunk_s"] <= r["first_commentary_s"]
        # The first chunk's video is complete one chunk after the model is ready, not before.
        assert r["first_chunk_s"] >= r["loaded_s"] + 1.0
        assert len(r["chunk_s"]) == 2 and r["slowest_chunk_s"] == max(r["chunk_s"])
        phases = r["chunk_phases_ms"][0]  # where each chunk's time went, from its stats
        assert set(phases) == {"queue", "vision", "evict", "prefill", "decode"} and phases["decode"] > 0
        assert r["first_text"] and (r["device"], r["dtype"]) == ("cpu", "torch.bfloat16")
        assert r["eager_chunks"] == 2 and r["first_compiled_chunk_s"] is None  # a CPU does not compile
    assert [s["cache"] for s in data["summary"]] == ["cold", "warm"]
    assert data["meta"]["weights_bytes"] == sum(
        p.stat().st_size for p in weights.glob("*.safetensors")
    ) and data["meta"]["config"]["model"] == str(weights)
    summary = (out / "summary.md").read_text()
    assert "| " + " | ".join(HEADER) + " |" in summary and summary in result.stdout


def test_the_first_commentary_is_the_first_chunk_with_text():
    def chunk(k: int, text: str, compiled: bool = False) -> dict:
        return {
            "complete": 10.0 + k,
            "pushed": 10.2 + k,
            "done": 10.5 + k,
            "text": text,
            "compiled": compiled,
        }

    events = {
        "python": 1.0,
        "loaded": 9.0,
        "device": "cpu",
        "dtype": "torch.float32",
        "chunks": [chunk(0, ""), chunk(1, " "), chunk(2, "goal"), chunk(3, "", compiled=True)],
    }
    figures = timeline(events, started=0.0)
    assert figures["loaded_s"] == 9.0 and figures["first_chunk_s"] == 10.5
    assert figures["first_commentary_s"] == 12.5 and figures["first_commentary_after_chunk_s"] == 0.5
    assert figures["first_text"] == "goal"
    assert figures["eager_chunks"] == 3 and figures["first_compiled_chunk_s"] == 13.5
    events["chunks"] = [chunk(0, ""), chunk(1, "")]
    silent = timeline(events, started=0.0)
    assert silent["first_commentary_s"] is None and silent["first_commentary_after_chunk_s"] is None


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--random-weights", "tiny"], "--random-weights needs --weights-dir"),
        (["--model", "tiny", "--weights-dir", "{tmp}/w"], "--weights-dir goes with --random-weights"),
        (["--model", "tiny", "--compile-cache", "{full}"], "is not an empty folder"),
        (["--random-weights", "tiny", "--weights-dir", "{full}"], "is not an empty folder"),
        (["--model", "tiny", "--resolution", "640by480"], "resolution must look like 1280x720"),
        (["--model", "tiny", "--resolution", "16x16"], "at least 32x32"),
    ],
    ids=[
        "no-weights-dir",
        "weights-dir-without-random",
        "used-cache",
        "used-weights-dir",
        "resolution",
        "tiny-frames",
    ],
)
def test_bad_startup_arguments_are_one_line_errors_and_nothing_is_overwritten(tmp_path, capsys, argv, words):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    argv = [a.format(tmp=tmp_path, full=full) for a in argv]
    status, lines = run_main(evals_main, ["startup", *argv, "--out", str(tmp_path / "out")], capsys)
    assert_one_error_line(status, lines, words)
    assert (full / "keep.txt").read_text() == "mine" and [p.name for p in full.iterdir()] == ["keep.txt"]
