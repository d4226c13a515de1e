"""The acceleration decision: made once per engine, from a request, with a reason for what is off."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from conftest import random_frames
from core.acceleration import Acceleration
from core.config import AccelerationConfig
from core.engine import StreamingEngine
from core.errors import ConfigError

CPU = torch.device("cpu")


def test_auto_on_a_cpu_turns_the_gpu_options_off_and_says_why():
    decided = Acceleration.decide(AccelerationConfig(), CPU)
    assert not (decided.compile or decided.cuda_graphs or decided.static_decode or decided.overlap)
    assert not decided.triton
    line = decided.describe()
    assert "\n" not in line
    for name in ("compile", "cuda_graphs", "static_decode", "overlap", "triton"):
        assert f"{name} off (" in line and name in decided.why_off


def test_asking_for_what_the_device_cannot_run_is_an_error():
    with pytest.raises(ConfigError, match="cuda_graphs needs a CUDA GPU"):
        Acceleration.decide(AccelerationConfig(cuda_graphs=True), CPU)
    with pytest.raises(ConfigError, match="overlap needs the static decode step"):
        Acceleration.decide(AccelerationConfig(overlap=True), CPU)
    with pytest.raises(ConfigError, match="decode_attention"):
        AccelerationConfig(decode_attention="fastest")


def test_options_off_by_request_say_so():
    decided = Acceleration.decide(AccelerationConfig(static_decode=True, compile=False), CPU)
    assert decided.static_decode and decided.decode_attention == "auto"
    assert decided.why_off["compile"] == "off by request"


def test_the_engine_logs_its_decision_once_and_runs_it(tiny_model, caplog):
    with caplog.at_level(logging.INFO, logger="core.model"):
        engine = StreamingEngine(tiny_model, acceleration=AccelerationConfig(static_decode=True))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("acceleration:")]
    assert lines == [engine.acceleration.describe()]
    rng = np.random.default_rng(0)
    with engine.start() as session:
        session.push(random_frames(rng, 56, 56), 0, 1)  # the static step is made at the first reply
        assert session._static_step is not None and not session._static_step.use_graph
        assert session.cache.fused_rotation is False
    with StreamingEngine(tiny_model).start() as session:  # the model's request: auto, on a CPU
        session.push(random_frames(rng, 56, 56), 0, 1)
        assert session._static_step is None
