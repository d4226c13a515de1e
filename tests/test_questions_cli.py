"""Questions on the command line: `--question TIME:TEXT` end to end with the tiny model (the answer marked in
the JSON lines, the subtitles and the printed output), lines typed on a terminal, and one-line errors."""

from __future__ import annotations

import io
import json
import sys

import pytest
import srt
from test_questions import wordless_tokens

from clihelpers import CLIP, assert_one_error_line, run_cli, run_main
from core.__main__ import ask_typed
from core.__main__ import main as core_main
from core.errors import StreamVLMError


@pytest.fixture
def config(tmp_path, tiny_model):
    """Greedy, and no token sampled that could end or empty an answer (test_questions.wordless_tokens)."""
    path = tmp_path / "config.toml"
    suppress = json.dumps(wordless_tokens(tiny_model))  # JSON's string escapes are TOML's
    path.write_text(
        f"[generation]\ntemperature = 0.0\nmin_new_tokens = 3\nmax_new_tokens = 6\nsuppress = {suppress}\n"
    )
    return path


def test_a_scripted_question_is_answered_in_its_chunk_and_marked_everywhere(tiny_dir, tmp_path, config):
    jsonl, subs = tmp_path / "out.jsonl", tmp_path / "out.srt"
    result = run_cli(
        "run", "--source", str(CLIP), "--model", str(tiny_dir), "--device", "cpu", "--config", str(config),
        "--question", "2.5:Who is winning?", "--question", "6:  What   happened?  ",
        "--jsonl", str(jsonl), "--srt", str(subs),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    answers = [line for line in lines if "question" in line]
    # 2.5 s is in the chunk 2-3 s; 6 s ends the chunk 5-6 s (the trainer's (start, end] rule).
    assert [(a["start"], a["question"]) for a in answers] == [
        (2.0, "Who is winning?"),
        (5.0, "What happened?"),
    ]
    assert all(a["text"] and not a["text"].startswith("A:") for a in answers)
    cues = {(c.start.total_seconds(), c.content) for c in srt.parse(subs.read_text())}
    assert {(a["start"], "A: " + a["text"]) for a in answers} <= cues
    printed = [x for x in result.stdout.splitlines() if x.startswith("[00:00:02.0")]
    assert printed == [f"[00:00:02.0 - 00:00:03.0] A: {answers[0]['text']}  (Q: Who is winning?)"]


class Terminal(io.StringIO):
    """Standard input as a terminal that has a question typed on it."""

    def isatty(self) -> bool:
        return True


def test_lines_typed_on_a_terminal_are_asked(tiny_dir, tmp_path, config, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", Terminal("\nWho has the ball?\n"))
    jsonl = tmp_path / "out.jsonl"
    argv = [
        "run",
        "--source",
        str(CLIP),
        "--model",
        str(tiny_dir),
        "--device",
        "cpu",
        "--config",
        str(config),
    ]
    assert core_main([*argv, "--jsonl", str(jsonl), "--quiet"]) == 0
    assert "Type a question" in capsys.readouterr().out
    asked = [json.loads(x).get("question") for x in jsonl.read_text().splitlines()]
    assert asked.count("Who has the ball?") == 1


def test_typed_lines_are_not_read_when_input_is_not_a_terminal(
    tiny_dir, tmp_path, config, monkeypatch, capsys
):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Who has the ball?\n"))
    jsonl = tmp_path / "out.jsonl"
    argv = [
        "run",
        "--source",
        str(CLIP),
        "--model",
        str(tiny_dir),
        "--device",
        "cpu",
        "--config",
        str(config),
    ]
    assert core_main([*argv, "--jsonl", str(jsonl), "--duration", "2"]) == 0
    assert "Type a question" not in capsys.readouterr().out
    assert all("question" not in json.loads(x) for x in jsonl.read_text().splitlines())


def test_a_typed_question_that_cannot_be_asked_is_reported_and_the_next_is_asked():
    asked, said = [], []

    class Pipe:
        def ask(self, text):
            if len(text) > 20:
                raise StreamVLMError("a question is at most 24 tokens")
            asked.append(text)

    ask_typed(io.StringIO("\n   \n" + "why " * 10 + "\nWho?\n"), Pipe(), lambda text, **_: said.append(text))
    assert asked == ["Who?\n"]
    assert said == ["question not asked: a question is at most 24 tokens"]


BAD_QUESTIONS = [
    (["--question", "Who is winning?"], ["--question", "TIME:QUESTION"]),
    (["--question", "12"], ["--question", "TIME:QUESTION"]),
    (["--question", "x:Who?"], ["--question", "time", "number"]),
    (["--question=-1:Who?"], ["--question", ">= 0"]),
    (["--question", "nan:Who?"], ["--question", "nan"]),
    (["--question", "1e12:Who?"], ["--question", "<="]),
    (["--question", "3:"], ["--question", "no question"]),
    (["--question", "3: \t "], ["--question", "no question"]),
    (["--question", "20:Who?"], ["--question 20", "after the end", "8"]),  # the clip is 8 s long
    (["--question", "5:Who?", "--duration", "4"], ["--question 5", "--duration"]),
    (["--question", "3:" + "why " * 40], ["--question 3", "at most", "tokens"]),
]


@pytest.mark.parametrize(
    "extra, words", BAD_QUESTIONS, ids=lambda x: " ".join(x)[:40] if isinstance(x, list) else ""
)
def test_bad_questions_are_one_line_errors_and_nothing_is_written(tiny_dir, tmp_path, capsys, extra, words):
    jsonl = tmp_path / "out.jsonl"
    argv = ["run", "--source", str(CLIP), "--model", str(tiny_dir), "--device", "cpu", "--jsonl", str(jsonl)]
    status, lines = run_main(core_main, [*argv, *extra], capsys)
    assert_one_error_line(status, lines, *words)
    assert not jsonl.exists()
