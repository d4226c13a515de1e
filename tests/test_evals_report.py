"""`python -m evals report`: runs side by side from their provenance records, refusing mixed methods."""

from __future__ import annotations

import json

import pytest

from evals.__main__ import main
from evals.fixtures import make_fixtures
from evals.results import COMPARED_FIELDS, run_meta

SMALL = ["--device", "cpu", "--dtype", "float32", "--max-pixels", str(4 * 28 * 28)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three one-question OVO-Bench runs: two made alike, one with another frame budget."""
    root = tmp_path_factory.mktemp("report")
    data = make_fixtures(root / "fixtures")["ovobench"]
    made = {}
    for name, extra in {"a": [], "b": [], "fewer-frames": ["--max-frames", "3"]}.items():
        made[name] = root / name
        args = ["ovobench", "--model", "tiny", "--data", str(data), "--out", str(made[name]),
                "--tasks", "OCR", *SMALL, *extra]  # fmt: skip
        assert main(args) == 0
    return made


def test_runs_made_alike_are_lined_up(runs, capsys):
    capsys.readouterr()
    assert main(["report", str(runs["a"]), str(runs["b"])]) == 0
    text = capsys.readouterr().out
    assert f"|  | {runs['a']} | {runs['b']} |" in text
    assert "| frames | fps=2.0, max_frames=480 | fps=2.0, max_frames=480 |" in text
    assert "| sampling | offline | offline |" in text
    assert "| tasks.OCR.accuracy |" in text and "≠" not in text


def test_a_different_frame_budget_is_refused_then_marked(runs, capsys):
    capsys.readouterr()
    assert main(["report", str(runs["a"]), str(runs["fewer-frames"])]) == 2
    captured = capsys.readouterr()
    error = captured.err.strip()
    assert len(error.splitlines()) == 1 and not captured.out
    assert error.startswith("error: ") and "frames: fps=2.0, max_frames=480 vs fps=2.0, max_frames=3" in error
    assert "--allow-differences" in error and "pixels" not in error
    assert main(["report", str(runs["a"]), str(runs["fewer-frames"]), "--allow-differences"]) == 0
    text = capsys.readouterr().out
    assert "| ≠ frames | fps=2.0, max_frames=480 | fps=2.0, max_frames=3 |" in text
    assert "| sampling |" in text  # what agrees is not marked
    assert text.count("| tasks.OCR.accuracy |") == 1


def test_a_run_without_a_record_is_named_not_crashed_on(runs, tmp_path, capsys):
    old = tmp_path / "old-run"
    old.mkdir()
    results = json.loads((runs["a"] / "results.json").read_text())
    del results["meta"]["provenance"]
    (old / "results.json").write_text(json.dumps(results))
    capsys.readouterr()
    assert main(["report", str(runs["a"]), str(old)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"{old} was made before runs recorded" in error
    assert main(["report", str(runs["a"]), str(old), "--allow-differences"]) == 0
    assert "(not recorded)" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nothing-here")]) == 2
    assert "has no results.json" in capsys.readouterr().err
    (old / "results.json").write_text("{not json")
    assert main(["report", str(old)]) == 2
    assert "is not valid JSON" in capsys.readouterr().err


def test_streamed_runs_record_engine_sampling_cache_judge_and_baseline():
    from dataclasses import asdict

    from core.config import EngineConfig

    engine = asdict(EngineConfig())
    config = {"model": "m", "engine": engine, "seed": 7, "baseline_run": "runs/base"}
    judge = {"url": "http://127.0.0.1:8000/v1", "model": "gpt-5", "temperature": 0.0, "seed": 42}
    record = run_meta("inf-stream", config, judge)["provenance"]
    assert set(COMPARED_FIELDS) <= set(record) and record["sampling"] == "streaming"
    assert record["frames"] == {
        "fps": engine["stream"]["fps"],
        "chunk_seconds": engine["stream"]["chunk_seconds"],
    }
    assert record["pixels"]["max_pixels"] == engine["stream"]["max_pixels"]
    assert record["cache"]["sink_tokens"] == engine["cache"]["sink_tokens"]
    assert record["judge"] == {"model": "gpt-5", "url": "http://127.0.0.1:8000/v1"}
    assert record["baseline"] == {"kind": "run", "source": "runs/base"} and record["seed"] == 7
    assert record["git"] and record["versions"]["torch"]
