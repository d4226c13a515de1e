"""The README's promises, checked against what they describe: the benchmarks' smoke recipe (its
exact commands, run offline with no key), the errors about a clip's times, the config example
(every key), the token paragraph and what `.ci/run` does."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
import socket
from pathlib import Path

import pytest

from core.config import EngineConfig, load_config_file
from evals import runner
from evals.__main__ import main as evals_main
from evals.fixtures import make_fixtures

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
EXAMPLE = ROOT / "assets" / "config.example.toml"


def section(heading: str) -> str:
    """The README's text under `heading` (a whole heading line), up to the next heading."""
    lines = README.splitlines()
    start = lines.index(heading) + 1
    level = heading.split()[0]
    end = next(
        (i for i in range(start, len(lines)) if re.match(rf"#{{1,{len(level)}}} ", lines[i])), len(lines)
    )
    return "\n".join(lines[start:end])


def shell_commands(block: str) -> list[list[str]]:
    """The commands of a fenced shell block, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [argv for argv in (shlex.split(line, comments=True) for line in joined.splitlines()) if argv]


def fenced(text: str, language: str = "bash") -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


# -- point 10: the smoke recipe -----------------------------------------------------------------------


def recipe() -> list[list[str]]:
    (block,) = fenced(section("### Smoke run on fixtures"))
    commands = shell_commands(block)
    for argv in commands:
        assert argv[:3] == ["python", "-m", "evals"], f"the recipe runs only python -m evals: {argv}"
    return [argv[3:] for argv in commands]


def _flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


@pytest.fixture
def offline(monkeypatch):
    """No network (every socket connect fails) and no API key."""

    def refuse(self, address):
        raise OSError(f"this test has no network (connect to {address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def test_the_smoke_recipe_runs_every_benchmark_offline_without_a_key(
    tiny_dir, tmp_path, monkeypatch, offline, capsys, caplog
):
    """The README's commands, exactly, in order, each through `python -m evals`'s main (in this
    process: the same code as the shell command without paying Python's start-up for each)."""
    caplog.set_level("INFO")
    monkeypatch.chdir(tmp_path)
    make, *benchmarks = recipe()
    assert make[0] == "make-fixtures"
    assert evals_main(make) == 0
    # make-fixtures prints each benchmark's --data folder: the recipe must use exactly those.
    printed = dict(line.split(" --data ") for line in capsys.readouterr().out.splitlines())
    wanted = {name.strip(): folder.strip() for name, folder in printed.items()}
    covered = {
        (argv[0] if argv[0] != "vqa" else f"vqa:{_flag(argv, '--benchmark')}"): _flag(argv, "--data")
        for argv in benchmarks
    }
    assert covered == wanted, "the recipe must run every benchmark make-fixtures writes, on its folder"

    for argv in benchmarks:
        caplog.clear()
        assert evals_main(argv) == 0, f"{shlex.join(argv)}: {capsys.readouterr().err}"
        out = tmp_path / _flag(argv, "--out")
        if argv[0] in ("inf-stream", "livesports-cc"):  # no judge: generation only, as the README says
            (generated,) = [
                json.loads(line) for line in (out / "generations.0of1.jsonl").read_text().splitlines()
            ]
            assert generated["items"], f"{argv[0]} generated no commentary"
            assert "generation only" in caplog.text
        else:
            assert json.loads((out / "results.json").read_text())["counts"], argv[0]
            assert (out / "summary.md").is_file()


# -- point 10: errors about a clip's start and end name what set them -------------------------------


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    return make_fixtures(tmp_path_factory.mktemp("fixtures"))


@pytest.fixture
def no_model(monkeypatch):
    """A bad span must fail before the model loads."""
    monkeypatch.setattr(runner, "load_engine", lambda args: pytest.fail("the model was loaded"))


def _evals(argv: list[str], capsys) -> tuple[int, str]:
    """`python -m evals` run in this process: its exit status and its last line on stderr (argparse
    rejects a bad flag value by exiting; the benchmarks return 2 after printing the error)."""
    try:
        code = evals_main(argv)
    except SystemExit as exc:
        code = exc.code
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines[-1] if lines else ""


@pytest.mark.parametrize(
    "start, words",
    [
        (None, "error: --start 1000 "),  # the default, past the 12-s fixture clips
        ("11.9", "error: --start 11.9 "),  # after the last transcript word
        ("-1", "--start"),
        ("nan", "--start"),
        ("inf", "--start"),
    ],
)
def test_an_inf_stream_start_outside_the_videos_names_start(
    fixtures, tmp_path, capsys, no_model, start, words
):
    argv = [
        "inf-stream",
        "--data",
        str(fixtures["inf-stream"]),
        "--out",
        str(tmp_path / "o"),
        "--model",
        "tiny",
    ]
    code, error = _evals(argv + (["--start", start] if start else []), capsys)
    assert code == 2 and "error: " in error and words in error
    if start in (None, "11.9"):
        assert error.startswith(words) and error.endswith("needs videos longer than that)")


def _rows(fixtures, tmp_path, change: dict) -> Path:
    """The LiveSports fixture with `change` applied to its first row."""
    folder = fixtures["livesports-cc"]
    rows = [json.loads(line) for line in (folder / "livesports_cc_test.jsonl").read_text().splitlines()]
    rows[0].update(change)
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))  # json writes NaN as NaN, as Python reads it
    return path


@pytest.mark.parametrize(
    "change, words",
    [
        ({"begin": 50, "end": 60}, "at or past the end of 'match0.mp4'"),
        ({"begin": 6, "end": 3}, "the clip ends at 3 s, not after its start at 6 s"),
        ({"begin": 4, "end": 4}, "the clip ends at 4 s, not after its start at 4 s"),
        ({"begin": float("nan")}, "the clip starts at nan s"),
        ({"begin": -2}, "the clip starts at -2 s"),
        ({"end": float("inf")}, "the clip ends at inf s"),
    ],
)
def test_a_livesports_event_outside_its_video_names_the_row(
    fixtures, tmp_path, capsys, no_model, change, words
):
    data = _rows(fixtures, tmp_path, change)
    argv = ["livesports-cc", "--data", str(data), "--video-dir", str(fixtures["livesports-cc"]), "--out",
            str(tmp_path / "o"), "--model", "tiny"]  # fmt: skip
    code, error = _evals(argv, capsys)
    assert code == 2 and error.startswith(f"error: {data} row 1 ('begin' ") and words in error
    assert "fix the row's begin and end" in error


def test_an_inf_stream_video_without_transcript_words_is_named(fixtures, tmp_path, capsys, no_model):
    data = tmp_path / "inf"
    data.mkdir()
    (data / "videos").symlink_to(fixtures["inf-stream"] / "videos")
    (data / "eval_all_metadata.jsonl").write_text('{"video": "match0.mp4", "content": []}\n')
    assert (
        evals_main(["inf-stream", "--data", str(data), "--out", str(tmp_path / "o"), "--model", "tiny"]) == 2
    )
    assert "eval_all_metadata.jsonl line 1: the video's content is empty" in capsys.readouterr().err


# -- point 12: the config file, the token, CI ---------------------------------------------------------


def _example_keys() -> dict[str, set[str]]:
    """Section -> the keys the example file shows, set or commented out (`# seed = 0`)."""
    keys: dict[str, set[str]] = {}
    current = None
    for line in EXAMPLE.read_text().splitlines():
        if header := re.fullmatch(r"\[(\w+)\]", line.strip()):
            current = keys.setdefault(header[1], set())
        elif (key := re.match(r"#?\s*(\w+)\s*=", line)) and current is not None:
            current.add(key[1])
    return keys


def test_the_example_config_loads_to_the_defaults_and_shows_every_key():
    assert load_config_file(EXAMPLE) == EngineConfig()  # so its values are the documented defaults
    defaults = EngineConfig()
    fields = {
        f.name: {g.name for g in dataclasses.fields(getattr(defaults, f.name))}
        for f in dataclasses.fields(defaults)
    }
    assert _example_keys() == fields
    documented = README[README.index("`--config FILE`") :]
    for name, keys in fields.items():
        paragraph = documented[documented.index(f"`[{name}]`") :]
        missing = [k for k in sorted(keys) if f"`{k}`" not in paragraph[: paragraph.index("(")]]
        assert not missing, f"the README's [{name}] keys lack {missing}"


def _options(command: str) -> set[str]:
    from core.__main__ import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {o for action in sub.choices[command]._actions for o in action.option_strings}


def test_the_token_paragraph_matches_the_clis():
    assert "--token-file" in _options("serve") and "STREAMVLM_TOKEN" in README
    assert ("the client has no token-file option" in README) == ("--token-file" not in _options("run"))
    assert ("it has no token flag" in README) == ("--token" not in _options("serve"))


def test_the_client_takes_its_token_from_streamvlm_token(tiny_model, monkeypatch, capsys):
    """What the README tells a user to do: the token in STREAMVLM_TOKEN, none on the command line."""
    from clihelpers import CLIP
    from conftest import SMALL_STREAM
    from core.__main__ import main as core_main
    from core.engine import StreamingEngine
    from core.remote.server import InferenceServer, ServerThread

    server = InferenceServer(StreamingEngine(tiny_model, stream=SMALL_STREAM), token="s3cret")
    running = ServerThread(server)
    try:
        argv = ["run", "--source", str(CLIP), "--server", running.url, "--duration", "1", "--quiet"]
        monkeypatch.setenv("STREAMVLM_TOKEN", "wrong")
        assert core_main(argv) == 2
        assert "token" in capsys.readouterr().err
        monkeypatch.setenv("STREAMVLM_TOKEN", "s3cret")
        assert core_main(argv) == 0, capsys.readouterr().err
    finally:
        running.stop()


def test_the_readme_says_what_ci_runs():
    script = (ROOT / ".ci" / "run").read_text()
    installed = re.search(r"apt-get install -y -qq \\\n(.*?)>", script, flags=re.S)[1].split()
    (block,) = [b for b in fenced(section("## Install and test")) if "apt-get install" in b]
    (listed,) = [argv for argv in shell_commands(block) if argv[:2] == ["apt-get", "install"]]
    assert sorted(listed[2:]) == sorted(p for p in installed if p != "\\")
    steps = [line.strip() for line in script.splitlines() if line.strip().startswith("python3 -m")]
    ci = section("## Install and test")[section("## Install and test").index("`.ci/run`") :]
    for step in steps:
        if not step.endswith("--version"):
            assert f"`{step}`" in re.sub(r"\s+", " ", ci), f"the README does not say .ci/run runs {step}"


def test_the_python_example_runs_with_the_tiny_model():
    """The README's Python use, as written, with only the model swapped for the tiny one."""
    import subprocess
    import sys

    (example,) = fenced(README, "python")
    assert 'load_model("mit-han-lab/StreamingVLM")' in example
    code = example.replace('load_model("mit-han-lab/StreamingVLM")', 'load_model("tiny", device="cpu")')
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines and all(re.match(r"^\s*\d+\.\d s  \S", line) for line in lines), result.stdout[-1000:]
