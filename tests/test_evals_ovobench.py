"""OVO-Bench: conversion of each task type, the 17-token answer rule, end to end, and resuming after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from core.frames import video_input
from evals import ovobench
from evals.__main__ import main
from evals.fixtures import make_fixtures
from evals.offline_qa import OVO_ANSWERS, OVO_PREFIX, FrameBudget, OfflineQA
from evals.ovobench import questions, summarize
from evals.runner import DataError

ROOT = Path("/data")
SMALL = ["--device", "cpu", "--dtype", "float32", "--max-pixels", str(4 * 28 * 28)]


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return make_fixtures(tmp_path_factory.mktemp("fixtures"))


def test_each_task_type_becomes_its_questions():
    items = [
        {"id": 1, "task": "EPM", "video": "src/a.mp4", "realtime": 12, "question": "What happened?",
         "options": ["first", "second", "third"], "gt": 1},
        {"id": 2, "task": "OCR", "video": "src/a.mp4", "realtime": 3.5, "question": "What is written?",
         "options": ["x", "y"], "gt": 0},
        {"id": 3, "task": "REC", "video": "src/b.mp4", "activity": "jump",
         "test_info": [{"realtime": 5, "count": 1}, {"realtime": 8, "count": 2}]},
        {"id": 4, "task": "SSR", "video": "src/c.mp4",
         "test_info": [{"realtime": 7, "step": "open the box", "type": 1}, {"realtime": 9, "step": "close it", "type": 0}]},
        {"id": 5, "task": "CRR", "video": "src/d.mp4", "question": "What is in the box?", "ask_time": 4,
         "test_info": [{"realtime": 9, "type": 0}, {"realtime": 15, "type": 1}]},
    ]  # fmt: skip
    qs = {q.key: q for q in questions(items, ROOT)}
    assert list(qs) == ["1", "2", "3:0", "3:1", "4:0", "4:1", "5:0", "5:1"]
    epm = qs["1"]
    assert (epm.task, epm.video, epm.start, epm.end, epm.truth) == ("EPM", ROOT / "src/a.mp4", 0.0, 12.0, "B")
    assert "A. first\nB. second\nC. third" in epm.prompt and "What happened?" in epm.prompt
    assert (qs["2"].end, qs["2"].truth) == (3.5, "A")
    assert [(qs[k].start, qs[k].end, qs[k].truth) for k in ("3:0", "3:1")] == [
        (0.0, 5.0, "1"),
        (0.0, 8.0, "2"),
    ]
    assert "jump" in qs["3:0"].prompt
    assert [(qs[k].end, qs[k].truth) for k in ("4:0", "4:1")] == [(7.0, "Yes"), (9.0, "No")]
    assert "open the box" in qs["4:0"].prompt and "close it" in qs["4:1"].prompt
    # CRR looks at [ask_time, realtime] only.
    assert [(qs[k].start, qs[k].end, qs[k].truth) for k in ("5:0", "5:1")] == [
        (4.0, 9.0, "No"),
        (4.0, 15.0, "Yes"),
    ]
    assert "What is in the box?" in qs["5:0"].prompt


@pytest.mark.parametrize(
    "item, message",
    [
        ({"id": 1, "task": "EPM", "video": "a.mp4", "realtime": 3, "question": "q", "options": ["a"]}, "lacks the field 'gt'"),
        ({"id": 1, "task": "EPM", "video": "a.mp4", "realtime": 3, "question": "q", "options": ["a"], "gt": 2}, "gt 2 must index"),
        ({"id": 1, "task": "XYZ", "video": "a.mp4"}, "unknown task 'XYZ'"),
        ({"id": 1, "task": "SSR", "video": "a.mp4", "test_info": [{"realtime": 1, "step": "s", "type": 3}]}, "type must be 0"),
        ({"id": 1, "task": "REC", "video": "a.mp4", "activity": "x", "test_info": [{"count": 1}]}, r"test_info\[0\] lacks the field 'realtime'"),
    ],
)  # fmt: skip
def test_malformed_items_say_which_and_what(item, message):
    with pytest.raises(DataError, match=message):
        questions([item], ROOT)


def test_answer_is_the_argmax_over_the_17_tokens_of_the_stock_forward(tiny_model):
    """One temporal group, where stock transformers and our positions agree exactly (DESIGN 2a)."""
    model = tiny_model
    qa = OfflineQA(model, FrameBudget.capped(6 * 28 * 28))
    frames = [np.random.default_rng(i).integers(0, 256, (56, 84, 3), dtype=np.uint8) for i in range(2)]
    answer = qa.answer(frames, 2.0, "Question: which?", OVO_ANSWERS, OVO_PREFIX)

    stock = _stock_scores(model, frames, qa.budget, "Question: which?")
    assert set(answer.scores) == set(OVO_ANSWERS)
    assert max(abs(stock[a] - answer.scores[a]) for a in OVO_ANSWERS) < 1e-4
    assert answer.answer == max(stock, key=stock.get)
    # A smaller answer set restricts the choice to it.
    two = qa.answer(frames, 2.0, "Question: which?", ("C", "D"), OVO_PREFIX)
    assert two.answer == max(("C", "D"), key=stock.get)


def _stock_scores(model, frames, budget, question: str) -> dict[str, float]:
    """The 17 answers' logits from stock transformers' forward over Qwen's chat layout, built by hand
    (one temporal group of frames, where stock positions and ours agree exactly)."""
    sp = model.special
    video = video_input(frames, budget.stream_config(len(frames)), model.vision, "cpu")

    def turn(role):
        return [sp.im_start, *model.encode(f"{role}\n")]

    end = [sp.im_end, *model.encode("\n")]
    ids = (turn("system") + model.encode("You are a helpful assistant.") + end + turn("user") + [sp.vision_start]
           + [sp.video_pad] * video.num_tokens + [sp.vision_end] + model.encode(question) + end
           + turn("assistant") + model.encode(OVO_PREFIX))  # fmt: skip
    ids = torch.tensor([ids])
    with torch.no_grad():
        logits = model.model(
            input_ids=ids,
            pixel_values_videos=video.pixel_values,
            video_grid_thw=video.grid_thw,
            second_per_grid_ts=torch.tensor([1.0]),
            mm_token_type_ids=(ids == sp.video_pad).long() * 2,
        ).logits[0, -1]
    return {a: float(logits[model.encode(a)[0]]) for a in OVO_ANSWERS}


def test_recent_frames_baseline_answers_from_the_last_frames_in_the_stock_layout(
    fixtures, tiny_model, tmp_path
):
    """`--recent-frames 2`: the baseline sees the last 2 frames of the 2 FPS sampling (one temporal
    group), and its answer scores are stock transformers' over exactly those frames."""
    from evals.video import frames_at, sample_times

    out = tmp_path / "run"
    args = ["ovobench", "--model", "tiny", "--data", str(fixtures["ovobench"]), "--out", str(out),
            "--tasks", "OCR", "--recent-frames", "2", *SMALL]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    (record,) = [json.loads(line) for line in (out / "baseline.0of1.jsonl").read_text().splitlines()]
    (full,) = [json.loads(line) for line in (out / "answers.0of1.jsonl").read_text().splitlines()]
    (q,) = [q for q in questions(json.loads((fixtures["ovobench"] / "ovo_bench_new.json").read_text()),
                                 fixtures["ovobench"]) if q.task == "OCR"]  # fmt: skip
    times = sample_times(0.0, q.end, fps=2.0, max_frames=480)
    assert full["frames"] == len(times) > 2 and record["frames"] == 2
    frames = [f.rgb for f in frames_at(q.video, times[-2:])]
    stock = _stock_scores(tiny_model, frames, FrameBudget.capped(4 * 28 * 28), q.prompt)
    assert max(abs(stock[a] - record["scores"][a]) for a in OVO_ANSWERS) < 1e-4
    assert record["answer"] == max(stock, key=stock.get)
    # Reported beside the model's numbers, and recorded as the run's baseline.
    assert results["meta"]["provenance"]["baseline"]["kind"] == "recent-frames 2"
    assert results["baseline"]["kind"] == "recent-frames 2" and "groups" in results["baseline"]
    assert "| group | model % | recent-frames 2 % | model - baseline |" in (out / "summary.md").read_text()


def test_recent_frames_defaults_to_four_and_baseline_model_needs_it(fixtures, tmp_path, capsys):
    from evals.__main__ import build_parser

    parsed = build_parser("ovobench").parse_args(["ovobench", "--data", "d", "--out", "o", "--recent-frames"])
    assert parsed.recent_frames == 4
    args = ["ovobench", "--model", "tiny", "--data", str(fixtures["ovobench"]), "--out", str(tmp_path / "o")]
    assert main([*args, "--baseline-model", "tiny"]) == 2
    assert "add --recent-frames N" in capsys.readouterr().err


def test_group_scores_are_means_of_task_accuracies():
    records = {
        "1": {"task": "OCR", "correct": True},
        "2": {"task": "OCR", "correct": False},  # OCR 50
        "3": {"task": "ACR", "correct": True},  # ACR 100
        "4": {"task": "EPM", "correct": False},  # EPM 0
        "5:0": {"task": "REC", "correct": True},
        "5:1": {"task": "REC", "correct": True},
        "6:0": {"task": "SSR", "correct": False},  # REC 100, SSR 0
    }
    results = summarize(records, [*records, "7"], {})
    assert results["groups"] == {"Real-Time": 75.0, "Backward": 0.0, "Forward": 50.0}
    assert results["overall"] == 50.0  # mean of the five tasks' accuracies
    assert results["counts"] == {"questions": 8, "answered": 7, "complete": False}


def test_end_to_end_on_the_fixture(fixtures, tiny_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    args = [
        "ovobench",
        "--model",
        str(tiny_dir),
        "--data",
        str(fixtures["ovobench"]),
        "--out",
        str(out),
        *SMALL,
    ]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["counts"] == {"questions": 15, "answered": 15, "complete": True}
    assert set(results["tasks"]) == {
        "OCR",
        "ACR",
        "ATR",
        "STU",
        "FPD",
        "OJR",
        "EPM",
        "ASI",
        "HLD",
        "REC",
        "SSR",
        "CRR",
    }
    assert results["meta"]["git"] and torch.__version__.startswith(results["meta"]["versions"]["torch"])
    assert (out / "summary.md").read_text().startswith("# OVO-Bench")
    assert (out / "accuracy.png").stat().st_size > 0
    answers = [json.loads(line) for line in (out / "answers.0of1.jsonl").read_text().splitlines()]
    assert all(a["answer"] in OVO_ANSWERS for a in answers)
    # Sharded reruns of a finished run do nothing (no model is loaded for zero items).
    monkeypatch.setattr(ovobench, "_offline_qa", lambda *a: pytest.fail("a model was loaded for no items"))
    assert main([*args, "--shard", "1/2"]) == 0


def test_a_killed_run_resumes_with_the_remaining_questions_only(fixtures, tiny_dir, tmp_path):
    out = tmp_path / "run"
    args = [
        "ovobench",
        "--model",
        str(tiny_dir),
        "--data",
        str(fixtures["ovobench"]),
        "--out",
        str(out),
        *SMALL,
    ]
    answers = out / "answers.0of1.jsonl"
    log = (tmp_path / "child.log").open("w")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    child = subprocess.Popen([sys.executable, "-m", "evals", *args], stdout=log, stderr=log, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if answers.exists() and len(answers.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
        log.close()
    before = _keys(answers)
    assert 3 <= len(before) < 15, "the child should have been killed part way"
    assert main(args) == 0
    after = _keys(answers)
    assert after[: len(before)] == before
    assert sorted(after[len(before) :]) == sorted(set(after) - set(before))  # each remaining question once
    assert len(set(after)) == len(after) == 15


def _keys(path: Path) -> list[str]:
    """Keys of the whole lines, in order (a line torn by the kill is left out)."""
    keys = []
    for line in path.read_text().splitlines():
        try:
            keys.append(json.loads(line)["key"])
        except json.JSONDecodeError:
            pass
    return keys


def test_a_missing_data_folder_says_so(tmp_path, capsys):
    assert (
        main(["ovobench", "--model", "tiny", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
        == 2
    )
    assert "data folder" in capsys.readouterr().err
