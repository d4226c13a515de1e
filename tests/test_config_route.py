"""One config route: a file, then flags, into one `EngineConfig`, and every command builds its engine
from it (`core.loading.open_engine`): the CLI's run and serve, the app, the benchmarks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # the app test: real widgets, offscreen

from core.cli_args import ArgumentParser, add_engine_arguments, config_from_args
from core.config import AccelerationConfig, EngineConfig, EvictionMode, ModelConfig, resolve_config
from core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

FILE = """
[stream]
fps = 4.0
[cache]
vision_window_chunks = 3
[generation]
max_new_tokens = 7
temperature = 0.0
[model]
dtype = "float32"
attn = "eager"
[acceleration]
static_decode = true
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "engine.toml"
    path.write_text(FILE)
    return path


def test_defaults_then_the_file_then_the_flags(config_file):
    config = resolve_config(config_file, {"stream": {"fps": 1.0}, "model": {"path": "tiny"}})
    assert config.stream.fps == 1.0  # the flag wins
    assert config.generation.max_new_tokens == 7 and config.cache.vision_window_chunks == 3  # the file
    assert config.generation.top_p == 1.0  # the default
    assert config.model == ModelConfig(path="tiny", dtype="float32", attn="eager")
    assert config.acceleration == AccelerationConfig(static_decode=True)


def test_the_cli_flags_go_through_the_same_rule(config_file):
    parser = ArgumentParser(prog="x")
    parser.add_argument("--model")
    add_engine_arguments(parser)
    args = parser.parse_args(
        ["--config", str(config_file), "--model", "tiny", "--device", "cpu", "--no-compile"]
    )
    config = config_from_args(args)
    assert config.model == ModelConfig(path="tiny", device="cpu", dtype="float32", attn="eager")
    assert config.acceleration.compile is False and config.acceleration.static_decode is True
    assert config_from_args(parser.parse_args([])) == EngineConfig()  # no flag, no file: the defaults


@pytest.mark.parametrize(
    "section, text, words",
    [
        ("model", 'dtype = "float64"', "dtype must be one of"),
        ("model", 'device = "gpu0"', "device must be auto, cpu, cuda or cuda:N"),
        ("model", 'attn = "fast"', "attn must be one of"),
        ("acceleration", 'decode_attention = "fastest"', "decode_attention must be one of"),
        ("acceleration", "compile = 3", "acceleration.compile has the wrong type"),
    ],
)
def test_model_and_acceleration_keys_are_checked_before_torch(tmp_path, section, text, words):
    path = tmp_path / "bad.toml"
    path.write_text(f"[{section}]\n{text}\n")
    with pytest.raises(ConfigError, match=words):
        load = resolve_config(path)
        del load
    code = (
        "import sys\nfrom core.__main__ import main\n"
        f"status = main(['run', '--source', {str(ROOT / 'assets' / 'demo_clip.mp4')!r}, '--model', 'tiny', "
        f"'--config', {str(path)!r}])\n"
        "print(status, 'torch' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr
    assert result.stderr.count("error:") == 1 and words in result.stderr


def test_serve_applies_its_config_file_and_tells_the_client(tiny_dir, config_file):
    """`python -m core serve --config FILE`: the served session runs the file's settings."""
    from websockets.sync.client import connect

    from core.remote import protocol as p

    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "core",
            "serve",
            "--model",
            str(tiny_dir),
            "--port",
            "0",
            "--config",
            str(config_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        line = server.stdout.readline()
        assert line.startswith("serving "), server.stderr.read()[-2000:] if not line else line
        url = line.split(" at ")[1].strip()
        with connect(url) as ws:
            ws.send(p.encode("hello", version=p.VERSION, previous_text=""))
            ready = json.loads(ws.recv(timeout=60))
        assert ready["type"] == "ready"
        settings = ready["config"]
        assert settings["stream"]["fps"] == 4.0
        assert settings["cache"]["vision_window_chunks"] == 3 and settings["cache"]["mode"] == "streaming"
        assert settings["generation"]["max_new_tokens"] == 7 and settings["generation"]["temperature"] == 0.0
    finally:
        server.terminate()
        server.wait(30)


def test_the_app_builds_its_engine_with_every_setting(qtbot, tiny_dir, tmp_path):
    """The GUI's run request carries the whole config, and the engine the worker builds has it."""
    pytest.importorskip("PySide6")
    import torch
    from PySide6.QtCore import QSettings

    from app.window import MainWindow
    from clihelpers import CLIP
    from core.config import CachePolicy, GenerationConfig

    config = EngineConfig(
        cache=CachePolicy(mode=EvictionMode.RECOMPUTE, vision_window_chunks=3, text_window_replies=2),
        generation=GenerationConfig(temperature=0.0, max_new_tokens=7, repetition_penalty=1.2),
        model=ModelConfig(device="cpu", dtype="bfloat16", attn="eager"),
        acceleration=AccelerationConfig(static_decode=True, decode_attention="math"),
    )
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(model=str(tiny_dir), source=str(CLIP), settings=settings, config=config)
    qtbot.addWidget(window)
    window.start()
    qtbot.waitUntil(lambda: window.worker is not None and window.worker.engine is not None, timeout=120_000)
    engine = window.worker.engine
    window.stop()
    qtbot.waitUntil(lambda: window.thread is None, timeout=60_000)
    assert engine.cache_policy == config.cache
    assert engine.generation == config.generation
    assert engine.model.dtype == torch.bfloat16 and engine.model.attention_backend == "eager"
    assert engine.acceleration.static_decode and engine.acceleration.decode_attention == "math"


def test_the_benchmarks_build_their_engine_from_the_same_route(config_file):
    import argparse

    from evals import runner

    parser = argparse.ArgumentParser()
    runner.add_common_arguments(parser, judge=False)
    args = parser.parse_args(
        [
            "--data",
            "d",
            "--out",
            "o",
            "--model",
            "tiny",
            "--config",
            str(config_file),
            "--max-new-tokens",
            "9",
        ]
    )
    config = runner.engine_config(args)
    assert config.generation.max_new_tokens == 9 and config.stream.fps == 4.0
    assert config.model == ModelConfig(path="tiny", dtype="float32", attn="eager")
