"""Inf-Streams-Eval and LiveSports-3K CC end to end: tiny model, fixture videos, a scripted judge on loopback."""

from __future__ import annotations

import argparse
import json
import re
import shutil

import pytest

from evals import livesports, runner
from evals.__main__ import main
from evals.commentary import commentate
from evals.fixtures import ScriptedChatServer, make_fixtures

SMALL = ["--device", "cpu", "--dtype", "float32", "--max-pixels", str(4 * 28 * 28), "--max-new-tokens", "4"]
FAST_JUDGE = [
    "--judge-model",
    "judge-x",
    "--judge-retries",
    "0",
    "--judge-backoff",
    "0.01",
    "--judge-workers",
    "1",
]
BASELINE = "BASELINE COMMENTARY"


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return make_fixtures(tmp_path_factory.mktemp("fixtures"))


def _api_or(judge):
    """The API baseline model answers with a fixed text; everything else goes to `judge`."""

    def script(body):
        return BASELINE if body["model"] == "vlm-x" else judge(body)

    return script


def _model_is_a(text: str, a: str, b: str) -> bool:
    return f"[{a}]\n{BASELINE}" not in text and f"[{b}]\n{BASELINE}" in text


def inf_judge(body):
    """Verdicts by window: (match 0, 4 s) the model both times; (match 0, 8 s) 'A' both times, a split;
    (match 1, 4 s) unparseable both times; (match 1, 8 s) the model as A, unparseable as B."""
    text = body["messages"][-1]["content"]
    start, match = re.search(r"of (\d+)-\d+ s of a sports broadcast \(Match (\d)\)", text).groups()
    model_is_a = _model_is_a(text, "Candidate A", "Candidate B")
    return {
        ("0", "4"): "A" if model_is_a else "B",
        ("0", "8"): "A",
        ("1", "4"): "maybe",
        ("1", "8"): "A" if model_is_a else "no idea",
    }[(match, start)]


def test_inf_stream_end_to_end_resumes_after_a_refusing_judge(
    fixtures, tiny_dir, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    args = ["inf-stream", "--model", str(tiny_dir), "--data", str(fixtures["inf-stream"]), "--out", str(out),
            "--start", "4", "--baseline-api-model", "vlm-x", "--baseline-api-retries", "0", *FAST_JUDGE, *SMALL]  # fmt: skip
    with ScriptedChatServer(_api_or(lambda body: (401, "Incorrect API key"))) as server:
        assert main([*args, "--judge-url", server.url, "--baseline-api-url", server.url]) == 2
    assert "HTTP 401" in capsys.readouterr().err
    generations = [json.loads(line) for line in (out / "generations.0of1.jsonl").read_text().splitlines()]
    assert [g["key"] for g in generations] == ["match0.mp4", "match1.mp4"]
    for g in generations:  # from --start to the last word (11.9 s), one reply per second at most
        assert g["items"][0]["start_time"] == 4.0 and all(i["end_time"] <= 12.0 for i in g["items"])
    api = [r for r in server.requests if r["model"] == "vlm-x"]
    assert len(api) == 4  # the four windows after 4 s, each seen offline by the API baseline
    parts = api[0]["messages"][1]["content"]
    assert parts[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert "2-6 sentences" in parts[-1]["text"] and api[0]["messages"][0]["role"] == "system"

    # Rerun with a judge that works: nothing is generated again (the model is never loaded).
    monkeypatch.setattr(
        runner, "load_engine", lambda args: pytest.fail("finished videos were generated again")
    )
    with ScriptedChatServer(_api_or(inf_judge)) as server:
        assert main([*args, "--judge-url", server.url, "--baseline-api-url", server.url]) == 0
        assert all(r["model"] == "judge-x" for r in server.requests)
        assert all(r["temperature"] == 0.0 and r["seed"] == 42 for r in server.requests)
    results = json.loads((out / "results.json").read_text())
    assert results["votes"] == {"model": 4, "baseline": 1, "unparseable": 3, "total": 8}
    assert results["win_rate"] == 80.0
    assert results["per_video"]["match0.mp4"]["win_rate"] == 75.0
    assert results["counts"]["windows"] == 4 and results["counts"]["complete"]
    assert results["meta"]["judge"]["model"] == "judge-x"
    assert "Win rate 80.0%" in (out / "summary.md").read_text()
    assert (out / "win_rate.png").exists()


def test_restarts_seed_each_session_with_the_commentary_so_far(fixtures, tiny_dir):
    namespace = argparse.Namespace(model=str(tiny_dir), device="cpu", dtype="float32", attn="auto", config=None,
                                   max_pixels=4 * 28 * 28, temperature=None, max_new_tokens=4)  # fmt: skip
    engine = runner.load_engine(namespace)
    starts = []
    original = engine.start

    def start(**kwargs):
        starts.append(kwargs["previous_text"])
        return original(**kwargs)

    engine.start = start
    video = fixtures["inf-stream"] / "videos" / "match0.mp4"
    items = commentate(
        engine, video, 4.0, 10.0, instruction="go", previous_text="seed words", restart_every=2
    )
    assert [i["start_time"] for i in items if i["start_time"] < 4.0] == []
    assert len(starts) == 3  # sessions at 4, 6 and 8 s
    replies = {i["start_time"]: i["response"] for i in items}
    assert starts[0] == "seed words"
    assert starts[1] == " ".join(["seed words", *(replies[t] for t in (4.0, 5.0) if t in replies)]).strip()
    assert starts[2].startswith(starts[1])


def ls_judge(body):
    """(match 0, attack 0) the model twice; (0, 1) 'A' twice; (1, 0) unparseable twice; (1, 1) the baseline twice."""
    text = body["messages"][-1]["content"]
    match, attack = re.search(r"\(Match (\d): attack (\d)\)", text).groups()
    model_is_a = _model_is_a(text, "Prediction A", "Prediction B")
    return {
        ("0", "0"): "A" if model_is_a else "B",
        ("0", "1"): "A",
        ("1", "0"): "neither",
        ("1", "1"): "B" if model_is_a else "A",
    }[(match, attack)]


def test_livesports_end_to_end(fixtures, tiny_dir, tmp_path, monkeypatch):
    seen = []
    real = livesports.commentate

    def recording(engine, path, begin, end, **kwargs):
        seen.append((begin, end, kwargs["instruction"], kwargs["previous_text"]))
        return real(engine, path, begin, end, **kwargs)

    monkeypatch.setattr(livesports, "commentate", recording)
    out = tmp_path / "run"
    with ScriptedChatServer(_api_or(ls_judge)) as server:
        args = ["livesports-cc", "--model", str(tiny_dir), "--data", str(fixtures["livesports-cc"]), "--out", str(out),
                "--judge-url", server.url, "--baseline-api-url", server.url, "--baseline-api-model", "vlm-x",
                *FAST_JUDGE, *SMALL]  # fmt: skip
        assert main(args) == 0
    begin, end, instruction, previous = seen[0]
    assert (begin, end) == (2.0, 6.0) and "Match 0: attack 0" in instruction
    rows = [
        json.loads(line)
        for line in (fixtures["livesports-cc"] / "livesports_cc_test.jsonl").read_text().splitlines()
    ]
    assert previous == rows[0]["preasr_text"]
    results = json.loads((out / "results.json").read_text())
    assert results["votes"] == {"model": 3, "baseline": 3, "unparseable": 2, "total": 8}
    assert results["win_rate"] == 37.5  # 3 wins / (2 x 4 events)
    assert results["meta"]["judge"] == {"url": server.url, "model": "judge-x", "temperature": 0.0, "seed": 42}


def test_malformed_and_missing_inputs_fail_clearly(fixtures, tmp_path, capsys):
    data = tmp_path / "inf"
    shutil.copytree(fixtures["inf-stream"], data, symlinks=True)
    lines = (data / "eval_all_metadata.jsonl").read_text().splitlines()
    (data / "eval_all_metadata.jsonl").write_text(lines[0] + "\n" + lines[1][:40] + "\n")
    out = ["--out", str(tmp_path / "o"), "--model", "tiny"]
    assert main(["inf-stream", "--data", str(data), *out]) == 2
    assert "eval_all_metadata.jsonl line 2 is not valid JSON" in capsys.readouterr().err

    (data / "eval_all_metadata.jsonl").write_text('{"video": "match0.mp4", "content": [[0, "x", "word"]]}\n')
    assert main(["inf-stream", "--data", str(data), *out]) == 2
    assert "content[0] must be [start, end, text]" in capsys.readouterr().err

    assert main(["inf-stream", "--data", str(tmp_path / "missing"), *out]) == 2
    assert "data folder" in capsys.readouterr().err

    bad = tmp_path / "ls.jsonl"
    bad.write_text(
        json.dumps({"video": "a.mp4", "video_id": "v", "event_id": 1, "begin": 0, "end": 5}) + "\n"
    )
    assert main(["livesports-cc", "--data", str(bad), *out]) == 2
    assert "lacks the field 'event_title'" in capsys.readouterr().err
