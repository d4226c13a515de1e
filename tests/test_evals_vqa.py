"""VQA: our reader of VLMEvalKit's TSV files end to end, and the VLMEvalKit model class against a stand-in.

VLMEvalKit's real pipeline runs in tests/test_evals_vlmevalkit.py (the `[vlmeval]` extra). Here the
registration test runs our class against a minimal stand-in of the two names it touches
(`vlmeval.vlm.base.BaseModel`, `vlmeval.config.supported_VLM`), so it runs without the extra.
"""

from __future__ import annotations

import json
import sys
import types

import pytest

from evals import vlmevalkit
from evals.__main__ import main
from evals.fixtures import make_fixtures
from evals.vqa import load_items
from evals.vqa import summarize as vqa_summarize

SMALL = ["--device", "cpu", "--dtype", "float32", "--max-pixels", str(4 * 28 * 28)]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return make_fixtures(tmp_path_factory.mktemp("fixtures"))


@pytest.mark.parametrize("name", ["Video-MME", "MVBench", "LongVideoBench"])
def test_builtin_backend_end_to_end(name, fixtures, tiny_dir, tmp_path):
    out = tmp_path / "run"
    data = fixtures[f"vqa:{name}"]
    args = ["vqa", "--benchmark", name, "--backend", "builtin", "--model", str(tiny_dir),
            "--data", str(data), "--out", str(out), *SMALL]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["counts"]["answered"] == results["counts"]["questions"] == 4
    answers = [json.loads(line) for line in (out / "answers.0of1.jsonl").read_text().splitlines()]
    assert all(a["answer"] in {"A", "B", "C", "D", "Yes", "No"} for a in answers)
    assert results["meta"]["config"]["backend"] == "builtin"


def test_tsv_rows_become_vlmevalkit_style_messages(fixtures):
    mme = load_items("Video-MME", fixtures["vqa:Video-MME"])[0]
    assert [p["type"] for p in mme.message] == ["video", "text", "text"]
    assert mme.truth == "A" and "A. white\nB. red" in mme.message[-1]["value"]
    mv = load_items("MVBench", fixtures["vqa:MVBench"])
    assert mv[0].clip is None and mv[1].clip == (1.0, 5.0)  # `bound` rows are cut to [start, end]
    assert mv[0].truth == "A" and "(C) up" in mv[0].message[0]["value"]
    lvb = load_items("LongVideoBench", fixtures["vqa:LongVideoBench"])[0]
    assert lvb.truth == "A" and "D. green" in lvb.message[-1]["value"]


def test_answer_letters_come_from_the_listed_options():
    assert vlmevalkit.answer_letters("Q?\nA. x\nB. y\nC. z") == ["A", "B", "C"]
    assert vlmevalkit.answer_letters("Options:\n(A) left\n(B) right") == ["A", "B"]
    assert vlmevalkit.answer_letters("Is it raining?") == list("ABCDE")


def test_accuracy_per_category():
    records = {"0": {"category": "x", "correct": True}, "1": {"category": "x", "correct": False},
               "2": {"category": "y", "correct": True}}  # fmt: skip
    results = vqa_summarize(records, ["0", "1", "2"], {}, "Video-MME")
    assert results["accuracy"] == 66.67
    assert results["categories"]["x"] == {"correct": 1, "total": 2, "accuracy": 50.0}


def test_malformed_tsv_and_missing_vlmevalkit_fail_clearly(fixtures, tmp_path, capsys, monkeypatch):
    (tmp_path / "Video-MME.tsv").write_text(
        "index\tvideo_path\tquestion\tcandidates\tanswer\n0\tv.mp4\tq\tnot a list\tA\n"
    )
    args = ["vqa", "--benchmark", "Video-MME", "--model", "tiny", "--out", str(tmp_path / "o")]
    assert main([*args, "--backend", "builtin", "--data", str(tmp_path)]) == 2
    assert "'candidates' must be a list literal" in capsys.readouterr().err
    # Without VLMEvalKit the backend says how to install it (simulated: CI has it).
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    (tmp_path / "Video-MME.tsv").write_text(
        "index\tvideo_path\tquestion\tcandidates\tanswer\n0\tv.mp4\tq\t['A. x', 'B. y']\tA\n"
    )
    assert main([*args, "--backend", "vlmevalkit", "--data", str(tmp_path)]) == 2
    assert "pip install 'streamvlm[vlmeval]'" in capsys.readouterr().err


@pytest.fixture
def vlmeval_standin(monkeypatch):
    """The two VLMEvalKit names our registration uses, with the behaviour their source shows."""

    class BaseModel:
        def generate(self, message, dataset=None):
            assert all(part["type"] in self.allowed_types for part in message)
            return self.generate_inner(message, dataset)

    modules = {
        name: types.ModuleType(name)
        for name in ("vlmeval", "vlmeval.vlm", "vlmeval.vlm.base", "vlmeval.config")
    }
    modules["vlmeval.vlm.base"].BaseModel = BaseModel
    modules["vlmeval.config"].supported_VLM = {}
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return modules


def test_registered_model_answers_a_vlmevalkit_video_message(vlmeval_standin, fixtures, tiny_dir):
    vlmevalkit.register("streamvlm", model_path=str(tiny_dir), nframe=8, device="cpu", dtype="float32",
                        max_pixels=4 * 28 * 28)  # fmt: skip
    model = vlmeval_standin["vlmeval.config"].supported_VLM["streamvlm"]()  # as VLMEvalKit builds it
    assert model.VIDEO_LLM and model.nframe == 8
    video = fixtures["vqa:Video-MME"] / "videos" / "match0.mp4"
    message = [{"type": "text", "value": ""}, {"type": "video", "value": str(video)},
               {"type": "text", "value": "Question: colour?\nA. white\nB. red\nAnswer: "}]  # fmt: skip
    assert model.generate(message, dataset="Video-MME") in {"A", "B", "Yes", "No"}
