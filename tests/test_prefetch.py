"""Reading a checkpoint's weights ahead while the process starts (core/prefetch.py)."""

from __future__ import annotations

import types

import pytest

import core.loading
from clihelpers import CLIP
from core import prefetch
from core.__main__ import main as core_main


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(prefetch, "_started", {})  # once per folder and process: each test its own


def test_every_weight_file_is_read_once_per_folder(tiny_dir):
    reader = prefetch.prefetch_weights(tiny_dir)
    assert reader is not None and reader.done.wait(30)
    files = prefetch.weight_files(tiny_dir)
    assert files and all(f.suffix == ".safetensors" for f in files)
    assert reader.bytes_read == reader.total_bytes == sum(f.stat().st_size for f in files) > 0
    assert prefetch.prefetch_weights(str(tiny_dir)) is reader  # the same folder: not read again


def test_nothing_is_read_where_there_is_nothing_to_read_ahead(tmp_path, tiny_dir):
    assert prefetch.prefetch_weights(None) is None
    assert prefetch.prefetch_weights("org/name") is None  # a hub id: read where it is fetched
    assert prefetch.prefetch_weights(tmp_path / "missing") is None
    (tmp_path / "config.json").write_text("{}")
    assert prefetch.prefetch_weights(tmp_path) is None  # no weight files
    assert prefetch.prefetch_weights(tiny_dir / "config.json") is None  # a file, not a folder


def test_weights_larger_than_half_the_available_memory_are_not_read_ahead(tiny_dir, monkeypatch):
    size = sum(f.stat().st_size for f in prefetch.weight_files(tiny_dir))
    monkeypatch.setattr(prefetch.psutil, "virtual_memory", lambda: types.SimpleNamespace(available=size))
    assert prefetch.prefetch_weights(tiny_dir) is None
    monkeypatch.setattr(prefetch.psutil, "virtual_memory", lambda: types.SimpleNamespace(available=3 * size))
    assert prefetch.prefetch_weights(tiny_dir) is not None


def test_a_stopped_reader_reads_no_further(tiny_dir, monkeypatch):
    monkeypatch.setattr(prefetch, "BLOCK_BYTES", 4096)
    reader = prefetch.WeightPrefetch(prefetch.weight_files(tiny_dir))
    reader.stop()
    reader.start()
    assert reader.done.wait(10) and reader.bytes_read == 0


def test_core_run_starts_reading_before_it_loads_the_model(tiny_dir, monkeypatch, tmp_path):
    order = []
    real_open = core.loading.open_engine
    monkeypatch.setattr("core.__main__.prefetch_weights", lambda path: order.append(("prefetch", str(path))))

    def open_engine(config, *args, **kwargs):
        order.append(("load", config.model.path))
        return real_open(config, *args, **kwargs)

    monkeypatch.setattr(core.loading, "open_engine", open_engine)
    argv = ["run", "--source", str(CLIP), "--model", str(tiny_dir), "--device", "cpu", "--duration", "1"]
    assert core_main([*argv, "--jsonl", str(tmp_path / "out.jsonl"), "--quiet"]) == 0
    assert order == [("prefetch", str(tiny_dir)), ("load", str(tiny_dir))]
