"""Shared fixtures: the tiny random-weight Qwen2.5-VL, built once per test run, and small streams.

No test touches a model hub: HF_HUB_OFFLINE is set before transformers is imported.

No test touches the user's own settings or files either: before anything is imported, every
folder the app, Qt, the model builders and the libraries write to under the home folder (Qt's
QSettings and fontconfig through XDG_*, `--model tiny`'s STREAMVLM_CACHE, the Hugging Face,
matplotlib and Triton caches) is pointed into TEST_HOME, a temporary folder of this run, removed
at its end. The variables are set, not defaulted, so a user's own XDG_CONFIG_HOME cannot leak in,
and every subprocess a test starts (the app, the CLIs) inherits them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Where the user's own files are, for the tests that check nothing was written there.
REAL_HOME = Path.home()
REAL_CONFIG = Path(os.environ.get("XDG_CONFIG_HOME") or REAL_HOME / ".config")
REAL_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or REAL_HOME / ".cache")

TEST_HOME = Path(tempfile.mkdtemp(prefix="streamvlm-tests-"))
ISOLATED = {
    "XDG_CONFIG_HOME": TEST_HOME / "config",  # QSettings("streamvlm", "streamvlm"), PulseAudio, Qt
    "XDG_CACHE_HOME": TEST_HOME / "cache",  # fontconfig, torch hub
    "XDG_DATA_HOME": TEST_HOME / "data",
    "XDG_STATE_HOME": TEST_HOME / "state",
    "STREAMVLM_CACHE": TEST_HOME / "cache" / "streamvlm",  # --model tiny (core.builders.tiny_model_dir)
    "HF_HOME": TEST_HOME / "cache" / "huggingface",
    "MPLCONFIGDIR": TEST_HOME / "config" / "matplotlib",
    "TRITON_HOME": TEST_HOME,  # Triton's cache, ~/.triton otherwise
}
for _name, _path in ISOLATED.items():
    _path.mkdir(parents=True, exist_ok=True)
    os.environ[_name] = str(_path)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from core.builders import build_tiny_model, tiny_model_dir  # noqa: E402
from core.config import StreamConfig  # noqa: E402
from core.loading import load_model  # noqa: E402

# Frames of 56-112 px stay tiny: 1-16 vision tokens per chunk.
SMALL_STREAM = StreamConfig(min_pixels=2 * 28 * 28, max_pixels=16 * 28 * 28)


def pytest_unconfigure(config) -> None:
    shutil.rmtree(TEST_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_dir():
    """The model `--model tiny` uses (in TEST_HOME), so the app and CLI tests that ask for 'tiny'
    find it built."""
    return tiny_model_dir()


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    return load_model(tiny_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def one_layer_model(tmp_path_factory):
    """With one layer, cached keys and values depend on a token and its position only, so a fresh
    forward over the kept tokens must reproduce the evicted cache exactly."""
    path = build_tiny_model(tmp_path_factory.mktemp("tiny-1layer"), num_layers=1, seed=1)
    return load_model(path, device="cpu", dtype="float32")


@pytest.fixture(autouse=True)
def qt_garbage_collected_in_the_main_thread(request):
    """After a test that drove Qt widgets, collect its garbage here, in the GUI thread: Qt objects left
    in reference cycles and collected later by whichever thread allocates (a server's, a scheduler's)
    would be deleted outside the GUI thread, which crashes the process (app/collector.py)."""
    yield
    if "qtbot" in request.fixturenames:
        import gc

        gc.collect()


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def random_frames(rng: np.random.Generator, height: int, width: int, n: int = 2) -> list[np.ndarray]:
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n)]


def pytest_collection_modifyitems(config, items):
    """One rule for `@pytest.mark.gpu`: such a test is skipped, saying why, where there is no CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
