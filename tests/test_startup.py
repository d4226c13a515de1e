"""`python -m evals startup` on the CPU with tiny random weights: fresh processes, cold then warm; with
`--app`, the desktop app's runs too (offscreen, its timeline from app/timeline.py); and the slim Qt bundle
for the GPU machines (evals/scripts/qt_bundle.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.timeline import ENV, Timeline
from clihelpers import ROOT, assert_one_error_line, run_main
from core.errors import ConfigError, StreamVLMError
from evals.__main__ import main as evals_main
from evals.startup import APP_TIMELINE, app_events, header, timeline


def run_startup(argv: list[str], env: dict) -> subprocess.CompletedProcess:
    """`python -m evals startup ARGV` in a fresh process (the benchmark itself starts more of them)."""
    return subprocess.run(
        [sys.executable, "-m", "evals", "startup", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )


def test_startup_benchmark_times_fresh_processes_cold_then_warm(tmp_path):
    out, weights, caches = tmp_path / "out", tmp_path / "weights", tmp_path / "caches"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = run_startup(
        [
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
        env,
    )
    assert result.returncode == 0, result.stderr
    assert (weights / "config.json").is_file() and list(weights.glob("*.safetensors"))
    data = json.loads((out / "results.json").read_text())
    assert [(r["process"], r["run"], r["cache"]) for r in data["runs"]] == [
        ("CLI", 1, "cold"),
        ("CLI", 2, "warm"),
    ]
    for r in data["runs"]:
        assert 0 < r["python_s"] < r["loaded_s"] < r["first_chunk_s"] <= r["first_commentary_s"]
        # where loading went: imports, then the weights, then the engine's set-up
        assert r["python_s"] < r["imported_s"] < r["weights_s"] <= r["loaded_s"]
        # The first chunk's video is complete one chunk after the model is ready, not before.
        assert r["first_chunk_s"] >= r["loaded_s"] + 1.0
        assert len(r["chunk_s"]) == 2 and r["slowest_chunk_s"] == max(r["chunk_s"])
        phases = r["chunk_phases_ms"][0]  # where each chunk's time went, from its stats
        assert set(phases) == {"queue", "vision", "evict", "prefill", "decode"} and phases["decode"] > 0
        assert r["first_text"] and (r["device"], r["dtype"]) == ("cpu", "torch.bfloat16")
        assert r["eager_chunks"] == 2 and r["first_compiled_chunk_s"] is None  # a CPU does not compile
        assert r["window_s"] is None  # no window in the CLI
    assert [(s["process"], s["cache"]) for s in data["summary"]] == [("CLI", "cold"), ("CLI", "warm")]
    assert data["meta"]["weights_bytes"] == sum(
        p.stat().st_size for p in weights.glob("*.safetensors")
    ) and data["meta"]["config"]["model"] == str(weights)
    summary = (out / "summary.md").read_text()
    assert "| " + " | ".join(header(with_app=False)) + " |" in summary and summary in result.stdout


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


def _installed_pyside() -> Path | None:
    spec = importlib.util.find_spec("PySide6")
    return Path(spec.origin).parents[1] if spec is not None else None


needs_qt = pytest.mark.skipif(_installed_pyside() is None, reason="the app needs PySide6")


@needs_qt
def test_the_app_is_timed_like_the_cli_in_fresh_offscreen_processes(tmp_path):
    out, weights, caches, user = (
        tmp_path / "out",
        tmp_path / "weights",
        tmp_path / "caches",
        tmp_path / "user",
    )
    user.mkdir()
    # The user's own settings folder: the app's runs must save their choices elsewhere.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "XDG_CONFIG_HOME": str(user)}
    argv = ["--random-weights", "tiny", "--weights-dir", str(weights), "--compile-cache", str(caches)]
    argv += ["--app", "--chunks", "2", "--warm", "0", "--resolution", "64x48", "--tokens", "3"]
    argv += ["--device", "cpu", "--dtype", "bfloat16", "--out", str(out)]
    result = run_startup(argv, env)
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "results.json").read_text())
    assert [(r["process"], r["run"], r["cache"]) for r in data["runs"]] == [
        ("CLI", 1, "cold"),
        ("app", 1, "cold"),
    ]
    app = data["runs"][1]
    assert 0 < app["python_s"] < app["window_s"] < app["loaded_s"] < app["first_chunk_s"]
    assert app["first_chunk_s"] <= app["first_commentary_s"] and app["first_text"]
    # The engine settings of the CLI's runs reached the app (bfloat16 is not the CPU's default).
    assert (app["device"], app["dtype"]) == ("cpu", "torch.bfloat16")
    assert len(app["chunk_s"]) == 2 and app["skipped_chunks"] == 0 and app["eager_chunks"] == 2
    assert 0 < app["first_commentary_after_chunk_s"] < 5
    assert not any(user.iterdir())
    assert [(s["process"], s["cache"]) for s in data["summary"]] == [("CLI", "cold"), ("app", "cold")]
    summary = (out / "summary.md").read_text()
    assert "| " + " | ".join(header(with_app=True)) + " |" in summary and "| app | cold | 1 |" in summary


def test_without_qt_the_app_runs_are_refused_before_any_weights_are_written(tmp_path, capsys, monkeypatch):
    import evals.startup

    # What the child that checks prints where PySide6 is not installed.
    monkeypatch.setattr(evals.startup, "APP_PROBE", "raise ImportError(\"No module named 'PySide6'\")")
    weights = tmp_path / "weights"
    argv = ["startup", "--random-weights", "tiny", "--weights-dir", str(weights), "--app"]
    status, lines = run_main(evals_main, [*argv, "--out", str(tmp_path / "out")], capsys)
    assert_one_error_line(status, lines, "--app needs PySide6", "No module named 'PySide6'", "qt_bundle.py")
    assert not weights.exists() and not (tmp_path / "out").exists()


def test_the_app_timeline_becomes_the_figures_of_the_cli():
    def chunk(t_start: float, ran: float, t: float, latency: float, **more) -> dict:
        return {
            "event": "chunk",
            "t": t,
            "t_start": t_start,
            "t_end": t_start + 1,
            "ran": ran,
            "latency": latency,
            "text": "",
            "skipped": 0,
            "compiled": False,
            "device": "cpu",
            "dtype": "torch.float32",
            "compile_thread_s": None,
            **more,
        }

    started = [
        {"event": "python", "t": 1.0},
        {"event": "shown", "t": 1.5},
        {"event": "phase", "t": 2.0, "phase": "loading model", "detail": "/weights"},
        {"event": "phase", "t": 9.0, "phase": "streaming", "detail": "(a file) on cpu"},
    ]
    records = started + [
        chunk(0.0, ran=10.5, t=10.52, latency=0.5),  # its video complete at 10.0
        chunk(1.0, ran=12.5, t=12.51, latency=1.5, text="goal"),  # complete at 11.0, after the one before
        # complete at 12.0 but the one before was handed over at 12.5: it could start only then
        chunk(2.0, ran=12.9, t=12.95, latency=0.9, compiled=True, skipped=1, compile_thread_s=3.2),
        {"event": "phase", "t": 13.0, "phase": "streaming", "detail": "(a file) on cpu"},
    ]
    figures = timeline(app_events(records), started=0.0)
    assert (figures["python_s"], figures["window_s"], figures["loaded_s"]) == (1.0, 1.5, 9.0)
    assert figures["first_chunk_s"] == 10.52 and figures["chunk_s"] == [0.52, 1.51, 0.45]
    assert figures["first_commentary_s"] == 12.51 and figures["first_commentary_after_chunk_s"] == 1.51
    assert figures["eager_chunks"] == 2 and figures["first_compiled_chunk_s"] == 12.95
    assert (
        figures["skipped_chunks"] == 1
        and figures["compile_thread_s"] == 3.2
        and figures["first_text"] == "goal"
    )
    with pytest.raises(ConfigError, match="the app's run failed: no GPU here"):
        app_events([*started, {"event": "failed", "t": 5.0, "reason": "no GPU here"}])
    with pytest.raises(ConfigError, match="before it streamed a chunk"):
        app_events(started[:3])


def test_the_app_timeline_is_off_unless_asked_and_a_bad_file_is_one_line(tmp_path, capsys, monkeypatch):
    from app.__main__ import main as app_main

    assert APP_TIMELINE == ENV  # the benchmark names the app's variable (evals import no app code)
    assert Timeline.from_env({}, started=1.0) is None
    path = tmp_path / "timeline.jsonl"
    Timeline.from_env({ENV: str(path)}, started=123.0).record("shown", t=124.0)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [{"event": "python", "t": 123.0}, {"event": "shown", "t": 124.0}]
    with pytest.raises(StreamVLMError, match=f"{ENV}=.* cannot be written"):
        Timeline.from_env({ENV: str(tmp_path)}, started=1.0)  # a folder
    monkeypatch.setenv(ENV, str(tmp_path / "no-such-folder" / "timeline.jsonl"))
    status, said = run_main(app_main, [], capsys)
    assert_one_error_line(status, said, ENV, "cannot be written")


# -- the Qt bundle for the GPU machines -------------------------------------------------------------------

qt_bundle = importlib.import_module("evals.scripts.qt_bundle")


def test_the_qt_bundle_takes_the_modules_the_app_imports(tmp_path):
    (tmp_path / "a.py").write_text("from PySide6.QtCore import Qt\nfrom PySide6 import QtGui, __version__\n")
    (tmp_path / "b.py").write_text(
        "def f():\n    import PySide6.QtSvg\n    return 'from PySide6 import QtQml'\n"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.py").write_text("from PySide6.QtWidgets.QtWidgets import QLabel\n")
    assert qt_bundle.app_qt_modules(tmp_path) == ["QtCore", "QtGui", "QtSvg", "QtWidgets"]
    assert set(qt_bundle.app_qt_modules()) >= {"QtCore", "QtGui", "QtWidgets"}  # the app's own


@needs_qt
@pytest.mark.skipif(not shutil.which("readelf") or not sys.platform.startswith("linux"), reason="ELF tools")
def test_the_qt_bundle_starts_qt_offscreen_on_its_own_and_names_a_missing_library(tmp_path):
    tree = tmp_path / "tree"
    qt_bundle.stage(_installed_pyside(), tree, ["QtCore", "QtGui", "QtWidgets"])
    libraries = {p.name for p in (tree / qt_bundle.LIBS).iterdir()}
    # What the GPU image lacks is in; glibc, the C++ runtime and X11's client libraries (it has them) are not.
    assert {"libxkbcommon.so.0", "libfontconfig.so.1", "libglib-2.0.so.0", "libEGL.so.1"} <= libraries
    assert not libraries & {"libX11.so.6", "libxcb.so.1", "libc.so.6", "libstdc++.so.6", "libgcc_s.so.1"}
    assert sorted(p.name for p in (tree / "PySide6").glob("Qt*.abi3.so")) == [
        "QtCore.abi3.so",
        "QtGui.abi3.so",
        "QtWidgets.abi3.so",
    ]
    plugins = tree / "PySide6" / "Qt" / "plugins"
    assert [p.relative_to(plugins).as_posix() for p in plugins.rglob("*.so")] == [
        "platforms/libqoffscreen.so"
    ]
    report = qt_bundle.check(tree, sys.executable)
    assert report["platform"] == "offscreen" and "DejaVu Sans" in report["fonts"]
    (tree / qt_bundle.LIBS / "libxkbcommon.so.0").unlink()
    with pytest.raises(qt_bundle.BundleError, match="libxkbcommon.so.0"):
        qt_bundle.check(tree, sys.executable)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--random-weights", "tiny"], "--random-weights needs --weights-dir"),
        (["--model", "tiny", "--weights-dir", "{tmp}/w"], "--weights-dir goes with --random-weights"),
        (["--model", "tiny", "--compile-cache", "{full}"], "is not an empty folder"),
        (["--random-weights", "tiny", "--weights-dir", "{full}"], "is not an empty folder"),
        (["--model", "tiny", "--resolution", "640by480"], "resolution must look like 1280x720"),
        (["--model", "tiny", "--resolution", "16x16"], "at least 32x32"),
        (["--model", "tiny", "--app", "--resolution", "65x64"], "even width and height"),
    ],
    ids=[
        "no-weights-dir",
        "weights-dir-without-random",
        "used-cache",
        "used-weights-dir",
        "resolution",
        "tiny-frames",
        "app-odd-frames",
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
