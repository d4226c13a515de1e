"""VQA through VLMEvalKit's own pipeline (nvidia-vlmeval, the `[vlmeval]` extra; CI installs it).

`python -m evals vqa --backend vlmevalkit` registers the tiny model in VLMEvalKit's `supported_VLM`,
and VLMEvalKit's dataset class (over the fixture in its local layout: TSV + videos), its
`infer_data_job_video` and its exact-match `evaluate` do the rest, offline. The builtin backend, on
the same fixture, must give the same prediction and the same score for every question.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from evals.__main__ import main
from evals.fixtures import make_fixtures

SMALL = ["--device", "cpu", "--dtype", "float32", "--max-pixels", str(4 * 28 * 28)]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    # VLMEvalKit writes beside the videos (MVBench's cut clips), so this module has its own copy.
    return make_fixtures(tmp_path_factory.mktemp("fixtures"))


def _answers(out):
    return {
        r["key"]: (r["answer"], r["correct"])
        for r in map(json.loads, (out / "answers.0of1.jsonl").read_text().splitlines())
    }


@pytest.mark.parametrize("name", ["Video-MME", "MVBench", "LongVideoBench"])
def test_vlmevalkit_pipeline_and_builtin_backend_agree(name, fixtures, tiny_dir, tmp_path, monkeypatch):
    if importlib.util.find_spec("vlmeval") is None:  # found, not imported: importing it turns autograd off
        pytest.skip("pip install 'streamvlm[vlmeval]'")
    monkeypatch.delenv("LMUData", raising=False)
    data = fixtures[f"vqa:{name}"]
    runs = {}
    for backend in ("vlmevalkit", "builtin"):
        out = runs[backend] = tmp_path / backend
        args = ["vqa", "--benchmark", name, "--backend", backend, "--model", str(tiny_dir),
                "--data", str(data), "--out", str(out), *SMALL]  # fmt: skip
        assert main(args) == 0
    kit, ours = (json.loads((runs[b] / "results.json").read_text()) for b in ("vlmevalkit", "builtin"))
    # VLMEvalKit's own files: its predictions, its per-question scores and its rating.
    work = runs["vlmevalkit"] / "vlmevalkit"
    dataset = {
        "Video-MME": "Video-MME_1fps",
        "MVBench": "MVBench_64frame",
        "LongVideoBench": "LongVideoBench_1fps",
    }
    for suffix in (".xlsx", "_score.xlsx", "_rating.json"):
        assert (work / f"streamvlm_{dataset[name]}{suffix}").is_file()
    assert (runs["vlmevalkit"] / "vlmevalkit_rating.json").is_file()
    records = [
        json.loads(line) for line in (runs["vlmevalkit"] / "answers.0of1.jsonl").read_text().splitlines()
    ]
    assert {r["vlmevalkit_score"] for r in records} <= {0, 1}  # VLMEvalKit scored every prediction
    assert _answers(runs["vlmevalkit"]) == _answers(runs["builtin"])
    assert len(_answers(runs["builtin"])) == 4
    assert (kit["accuracy"], kit["categories"]) == (ours["accuracy"], ours["categories"])
    assert kit["meta"]["config"]["backend"] == "vlmevalkit"
    assert kit["meta"]["provenance"]["versions"]["nvidia-vlmeval"] == "26.3"
    # Same method, same numbers: the report lines them up without complaint.
    assert main(["report", str(runs["vlmevalkit"]), str(runs["builtin"])]) == 0
    # Importing VLMEvalKit turns autograd off process-wide; the backend puts it back (a later training step,
    # in the same process, needs it).
    assert torch.is_grad_enabled()
