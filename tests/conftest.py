"""Shared fixtures: the tiny random-weight Qwen2.5-VL, built once per test run, and small streams.

No test touches a model hub: HF_HUB_OFFLINE is set before transformers is imported.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from core.config import StreamConfig  # noqa: E402
from core.model import build_tiny_model, load_model  # noqa: E402

# Frames of 56-112 px stay tiny: 1-16 vision tokens per chunk.
SMALL_STREAM = StreamConfig(min_pixels=2 * 28 * 28, max_pixels=16 * 28 * 28)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    return load_model(tiny_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def one_layer_model(tmp_path_factory):
    """With one layer, cached keys and values depend on a token and its position only, so a fresh
    forward over the kept tokens must reproduce the evicted cache exactly."""
    path = build_tiny_model(tmp_path_factory.mktemp("tiny-1layer"), num_layers=1, seed=1)
    return load_model(path, device="cpu", dtype="float32")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def random_frames(rng: np.random.Generator, height: int, width: int, n: int = 2) -> list[np.ndarray]:
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n)]
