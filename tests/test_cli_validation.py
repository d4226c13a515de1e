"""Usage errors of every command line: numbers in range, `serve`'s address, and all before torch loads.

Each bad flag or config value must end the command with status 2 and the one line `error: ...` naming
the flag or key and the allowed range; never a traceback, never minutes of model loading first.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from clihelpers import CLIP, ROOT, assert_one_error_line, run_main
from core.__main__ import build_parser as core_parser
from core.__main__ import main as core_main
from core.config import CachePolicy, GenerationConfig, StreamConfig

if TYPE_CHECKING:
    from core.config import Range


def actions(parser: argparse.ArgumentParser, path: str = ""):
    """(command path, action) for every option of a parser and of its subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from actions(sub, f"{path} {name}".strip())
        else:
            yield path, action


def checked_flags(parser: argparse.ArgumentParser) -> list[tuple[str, str, Range]]:
    return [
        (path, action.option_strings[-1] if action.option_strings else action.dest, action.type.range)
        for path, action in actions(parser)
        if hasattr(action.type, "range")
    ]


def bad_values(allowed: Range) -> list[str]:
    """Values every range refuses: not finite, far too large, just below the bottom, and not numbers."""
    values = ["nan", "inf", "-inf", str(10**30), "ten"]
    if allowed.low is not None:
        below = allowed.low if allowed.low_open else allowed.low - (1 if allowed.integer else 0.5)
        values.append(str(int(below)) if allowed.integer else str(below))
    if allowed.integer:
        values.append("2.5")
    return values


def evals_parser(task: str) -> argparse.ArgumentParser:
    from evals.__main__ import build_parser

    return build_parser(task)


def all_parsers() -> dict[str, argparse.ArgumentParser]:
    from app.__main__ import build_parser as app_parser
    from evals.registry import TASKS
    from trainer.__main__ import build_parser as trainer_parser

    parsers = {"core": core_parser(), "app": app_parser(), "trainer": trainer_parser()}
    parsers |= {f"evals {name}": evals_parser(name) for name in TASKS}
    return parsers


# -- every number a command line takes is checked ---------------------------------------------------


def test_no_command_line_takes_an_unchecked_number():
    """A plain `type=float` lets nan and inf through; `type=int` any size. Every numeric flag of every
    command line (core, app, trainer, each benchmark) uses a checked type from core/cli_args.py."""
    plain = [
        f"{name}: {path} {action.option_strings or action.dest}"
        for name, parser in all_parsers().items()
        for path, action in actions(parser)
        if action.type in (int, float)
    ]
    assert not plain, "flags without a range: " + "; ".join(plain)


CORE_FLAGS = checked_flags(core_parser())
REQUIRED = {
    "run": ["--source", str(CLIP), "--model", "tiny"],
    "serve": ["--model", "tiny"],
    "build-tiny": ["unused-folder"],
}


def test_the_core_flags_are_all_found():
    names = {flag for _, flag, _ in CORE_FLAGS}
    assert {"--fps", "--seed", "--latency-budget", "--record-fps", "--duration", "--port"} <= names
    assert {"--max-sessions", "--idle-timeout", "--layers", "--max-pixels", "--top-p"} <= names


@pytest.mark.parametrize(
    "command, flag, value",
    [(path, flag, value) for path, flag, allowed in CORE_FLAGS for value in bad_values(allowed)],
)
def test_each_bad_number_is_one_line_naming_the_flag_and_range(capsys, tmp_path, command, flag, value):
    argv = [command, *REQUIRED[command], f"{flag}={value}"]
    status, lines = run_main(core_main, argv, capsys)
    assert_one_error_line(status, lines, flag, "must be a", "number")
    assert not (tmp_path / "unused-folder").exists()


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--fps", "inf", "> 0 and <= 30"),
        ("--fps", "1000", "> 0 and <= 30"),
        ("--latency-budget", "nan", "> 0"),
        ("--record-fps", "0", "> 0"),
        ("--duration", "inf", "> 0"),
        ("--seed", str(2**64), "<= 18446744073709551615"),
        ("--max-new-tokens", "0", ">= 1"),
        ("--top-p", "1.5", "<= 1"),
    ],
)
def test_the_issue_s_examples(capsys, flag, value, expected):
    status, lines = run_main(core_main, ["run", *REQUIRED["run"], flag, value], capsys)
    assert_one_error_line(status, lines, flag, expected)


def test_the_ranges_accept_their_edges(capsys):
    """In range is accepted: the error comes later, from the missing source, not from the numbers."""
    argv = ["run", "--source", "nowhere.mp4", "--model", "tiny", "--fps", "30", "--seed", str(2**64 - 1)]
    argv += ["--top-k", "0", "--top-p", "1", "--temperature", "0", "--max-pixels", str(16384 * 28 * 28)]
    status, lines = run_main(core_main, argv, capsys)
    assert_one_error_line(status, lines, "nowhere.mp4")


def test_record_fps_below_the_model_fps_is_refused(capsys, tmp_path):
    argv = ["run", *REQUIRED["run"], "--fps", "4", "--record", str(tmp_path / "r.mp4"), "--record-fps", "2"]
    status, lines = run_main(core_main, argv, capsys)
    assert_one_error_line(status, lines, "--record-fps", "at least", "4")
    assert list(tmp_path.iterdir()) == []


# -- config files: the same rule as the flags -------------------------------------------------------

SECTIONS = {"stream": StreamConfig, "cache": CachePolicy, "generation": GenerationConfig}


def config_keys() -> list[tuple[str, str, Range]]:
    from dataclasses import fields

    return [
        (section, f.name, f.metadata["range"])
        for section, cls in SECTIONS.items()
        for f in fields(cls)
        if "range" in f.metadata
    ]


def yaml_value(allowed: Range, kind: str) -> str:
    """A bad value written as YAML (whose integers, unlike TOML's, have no 64-bit limit)."""
    if kind == "below":
        return (
            "0.0"
            if allowed.low_open
            else str(int(allowed.low) - 1)
            if allowed.integer
            else str(allowed.low - 0.5)
        )
    return {
        "nan": ".nan",
        "inf": ".inf",
        "-inf": "-.inf",
        "huge": str(10**30) if allowed.integer else "1.0e300",
    }[kind]


@pytest.mark.parametrize(
    "section, key, allowed, kind",
    [
        (section, key, allowed, kind)
        for section, key, allowed in config_keys()
        for kind in (["huge", "below"] if allowed.integer else ["nan", "inf", "-inf", "huge", "below"])
    ],
)
def test_each_bad_config_value_is_one_line_naming_the_file_and_key(
    capsys, tmp_path, section, key, allowed, kind
):
    config = tmp_path / "bad.yaml"
    config.write_text(f"{section}:\n  {key}: {yaml_value(allowed, kind)}\n")
    status, lines = run_main(core_main, ["run", *REQUIRED["run"], "--config", str(config)], capsys)
    assert_one_error_line(status, lines, str(config), f"{section} config", f"{key} must be a")


def test_a_yaml_nan_is_refused_like_a_flag(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("generation:\n  repetition_penalty: .nan\n")
    status, lines = run_main(core_main, ["run", *REQUIRED["run"], "--config", str(config)], capsys)
    assert_one_error_line(status, lines, "repetition_penalty must be a number > 0 and <= 10 (got nan)")


# -- serve: its own options --------------------------------------------------------------------------


@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_serve_on_a_port_in_use_is_one_line_before_the_model_loads(capsys, busy_port):
    status, lines = run_main(
        core_main, ["serve", "--model", "no/such-model", "--port", str(busy_port)], capsys
    )
    assert_one_error_line(status, lines, f"--port {busy_port}", "in use")


@pytest.mark.parametrize("host", ["203.0.113.7", "no-such-host.invalid", "300.1.1.1"])
def test_serve_on_an_address_this_machine_lacks_is_one_line(capsys, host):
    status, lines = run_main(core_main, ["serve", "--model", "no/such-model", "--host", host], capsys)
    assert_one_error_line(status, lines, f"--host {host}")


# -- usage errors come before torch: checked in a fresh interpreter ---------------------------------

PROBE = """
import importlib, json, sys
module, argv = sys.argv[1], json.loads(sys.argv[2])
main = importlib.import_module(module).main
try:
    status = main(argv)
except SystemExit as exc:
    status = exc.code
print(json.dumps({"status": status, "heavy": sorted({"torch", "transformers", "PySide6"} & set(sys.modules))}))
"""


def probe(module: str, argv: list[str], cwd: Path) -> tuple[dict, list[str]]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, module, json.dumps(argv)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return json.loads(result.stdout.splitlines()[-1]), result.stderr.splitlines()


def usage_errors(tmp: Path) -> dict[str, tuple[str, list[str], str]]:
    bad_config = tmp / "bad.toml"
    bad_config.write_text("[stream]\nfps = inf\n")
    video = tmp / "clip.mp4"
    video.write_bytes(CLIP.read_bytes())
    return {
        "core flag": (
            "core.__main__",
            ["run", "--source", str(video), "--model", "tiny", "--fps", "inf"],
            "--fps",
        ),
        "core config file": (
            "core.__main__",
            ["run", "--source", str(video), "--model", "tiny", "--config", str(bad_config)],
            "fps",
        ),
        "core output is the source": (
            "core.__main__",
            ["run", "--source", str(video), "--model", "tiny", "--srt", str(video)],
            "--srt",
        ),
        "core serve port": ("core.__main__", ["serve", "--model", "tiny", "--port", "99999"], "--port"),
        "evals flag": ("evals.__main__", ["efficiency", "--random-weights", "tiny", "--fps", "nan"], "--fps"),
        "evals unknown task": ("evals.__main__", ["efficency"], "efficency"),
        "trainer missing config": (
            "trainer.__main__",
            ["--config", str(tmp / "none.yaml")],
            "none.yaml",
        ),
        "trainer bad value": (
            "trainer.__main__",
            ["--config", str(ROOT / "trainer" / "configs" / "tiny.yaml"), "optim.weight_decay=.nan"],
            "weight_decay",
        ),
        "app record folder": ("app.__main__", ["--record", str(tmp / "missing")], "--record"),
    }


def test_usage_errors_come_before_torch_and_transformers_are_imported(tmp_path):
    problems = []
    for name, (module, argv, word) in usage_errors(tmp_path).items():
        report, lines = probe(module, argv, tmp_path)
        errors = [line for line in lines if line.startswith("error: ")]
        if report["status"] != 2 or len(errors) != 1 or word not in errors[0] or report["heavy"]:
            problems.append(f"{name}: status {report['status']}, imported {report['heavy']}, stderr {lines}")
    assert not problems, "\n".join(problems)


# -- the lazy evals registry (issue 15, point 7) ----------------------------------------------------

WITHOUT = """
import runpy, sys
class Missing:  # as if these packages were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"av", "openai"}:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Missing())
sys.argv = ["evals", *sys.argv[1:]]
runpy.run_module("evals", run_name="__main__")
"""


def test_evals_list_imports_no_benchmark(capsys):
    from evals.__main__ import main
    from evals.registry import TASKS

    result = subprocess.run(
        [sys.executable, "-c", PROBE, "evals.__main__", json.dumps(["list"])],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert json.loads(result.stdout.splitlines()[-1]) == {"status": 0, "heavy": []}
    assert main(["list"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list(TASKS)


@pytest.mark.parametrize(
    "argv",
    [
        ["ceilings", "--device", "cpu"],
        [
            "efficiency",
            "--random-weights",
            "tiny",
            "--seconds",
            "2",
            "--policies",
            "streaming",
            "--device",
            "cpu",
        ],
    ],
    ids=["ceilings", "efficiency"],
)
def test_efficiency_and_ceilings_run_without_pyav_and_openai(tmp_path, argv):
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT, *argv, "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert any((tmp_path / "out").iterdir())


def test_serve_on_port_0_prints_the_port_it_took(tiny_dir, tmp_path):
    """Port 0 asks for any free port: the URL printed is the one clients can reach, not ':0'."""
    server = subprocess.Popen(
        [sys.executable, "-m", "core", "serve", "--model", str(tiny_dir), "--port", "0", "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "serve.log").open("w"),
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
        cwd=ROOT,
    )
    try:
        line = server.stdout.readline()
        port = int(line.rsplit(":", 1)[1])
        assert line.startswith("serving") and port > 0, (tmp_path / "serve.log").read_text()
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass  # it listens there
    finally:
        server.terminate()
        server.wait(timeout=30)
