"""Downloading a hub model (core/download.py) from a local server that speaks the hub's file API
(`FakeHub`, tests/hubhelpers.py). `HF_ENDPOINT` points the command lines at it; HF_HOME is a
temporary folder of each test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clihelpers import CLIP, ROOT
from core.download import DownloadCancelled, DownloadProgress, fetch
from hubhelpers import BIG, CHUNK, COMMIT, NOT_FETCHED, REPO, FakeHub, repository_files


@pytest.fixture(scope="module")
def repo_files(tiny_dir) -> dict[str, bytes]:
    return repository_files(tiny_dir)


@pytest.fixture
def hf_home(tmp_path) -> Path:
    home = tmp_path / "hf-home"
    home.mkdir()
    return home


def hub_env(hub_url: str, hf_home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.pop("HF_HUB_CACHE", None)
    return {**env, "HF_ENDPOINT": hub_url, "HF_HOME": str(hf_home), "PYTHONPATH": str(ROOT), **extra}


def core_run(env: dict[str, str], *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "core",
        "run",
        "--source",
        str(CLIP),
        "--model",
        REPO,
        "--device",
        "cpu",
        "--duration",
        "2",
        "--min-new-tokens",
        "3",
        *extra,
    ]


def blobs(hf_home: Path) -> Path:
    return hf_home / "hub" / "models--org--name" / "blobs"


def test_run_downloads_a_hub_model_with_a_progress_bar_and_streams(repo_files, hf_home):
    with FakeHub(REPO, repo_files) as hub:
        # A terminal, as far as rich can tell: the bar is drawn.
        env = hub_env(hub.url, hf_home, TTY_COMPATIBLE="1", COLUMNS="150")
        result = subprocess.run(core_run(env), capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        assert "downloading org/name" in result.stdout
        total_mb = f"{hub.total() / 1e6:.1f}"
        assert f"{total_mb}/{total_mb} MB" in result.stdout  # rich's DownloadColumn at the end
        assert "MB/s" in result.stdout  # its TransferSpeedColumn
        assert re.search(r"\[00:00:0\d\.\d - 00:00:0\d\.\d\] \S", result.stdout), result.stdout  # commentary
        assert sum(hub.served.values()) == hub.total()

        # The second start finds the snapshot complete in the cache: it asks the hub nothing.
        hub.asked.clear()
        again = subprocess.run(core_run(env), capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
        assert again.returncode == 0, again.stderr
        assert "downloading" not in again.stdout and not hub.asked


def test_a_download_killed_halfway_fetches_only_the_rest_on_the_next_start(repo_files, hf_home):
    with FakeHub(REPO, repo_files) as hub:
        env = hub_env(hub.url, hf_home)
        hub.stall_after[BIG] = CHUNK + CHUNK // 2
        first = subprocess.Popen(
            core_run(env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT
        )
        try:
            partial = _wait_for_partial(blobs(hf_home), CHUNK, first)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(30)
        hub.release.set()
        hub.stall_after.clear()
        on_disk = sum(p.stat().st_size for p in blobs(hf_home).iterdir())
        assert partial.stat().st_size == CHUNK and on_disk < hub.total()

        hub.served.clear()
        result = subprocess.run(core_run(env), capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        assert sum(hub.served.values()) == hub.total() - on_disk  # only the rest
        assert hub.served[BIG] == len(repo_files[BIG]) - CHUNK
        snapshot = hf_home / "hub" / "models--org--name" / "snapshots" / COMMIT
        assert (snapshot / BIG).read_bytes() == repo_files[BIG]
        assert (snapshot / "config.json").read_bytes() == repo_files["config.json"]
        assert not list(blobs(hf_home).glob("*.incomplete"))


def _wait_for_partial(folder: Path, size: int, process: subprocess.Popen) -> Path:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = [p for p in folder.glob("*.incomplete")] if folder.is_dir() else []
        if found and found[0].stat().st_size >= size:
            return found[0]
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.05)
    raise AssertionError("the download never got halfway")


def test_a_download_that_does_not_fit_is_refused_in_one_sentence(repo_files, hf_home):
    with FakeHub(REPO, repo_files) as hub:
        hub.claimed["model.safetensors"] = 10**18  # an exabyte: no disk has it free
        env = hub_env(hub.url, hf_home)
        result = subprocess.run(core_run(env), capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "model 'org/name' needs 1000" in errors[0] and "PB" not in errors[0]
    assert f"HF_HOME={hf_home}" in errors[0] and "--model /path/to/folder" in errors[0]
    assert not hub.served  # refused before a byte


def test_an_unreachable_hub_gives_the_one_sentence_offline_message(hf_home):
    env = hub_env("http://127.0.0.1:9", hf_home)  # the discard port: nothing listens
    result = subprocess.run(core_run(env), capture_output=True, text=True, timeout=180, env=env, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "cannot be reached" in errors[0] and "http://127.0.0.1:9" in errors[0]
    assert "--model /path/to/folder" in errors[0]


# -- the API the app calls, in process -------------------------------------------------------------


@pytest.fixture
def online(monkeypatch):
    """conftest.py sets HF_HUB_OFFLINE for every test; these talk to the local hub."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_fetch_reports_progress_and_a_cancel_stops_it_keeping_the_bytes(repo_files, tmp_path, online):
    cache = tmp_path / "hub"
    events: list[DownloadProgress] = []
    cancel = threading.Event()
    with FakeHub(REPO, repo_files) as hub:
        hub.stall_after[BIG] = CHUNK + CHUNK // 2

        def on_progress(event: DownloadProgress) -> None:
            events.append(event)
            if event.done >= CHUNK:  # the big file's first block is on disk: cancel now
                cancel.set()
                hub.release.set()  # the server sends the rest; the cancel must stop it at the next block

        with pytest.raises(DownloadCancelled, match="kept"):
            fetch(REPO, progress=on_progress, cancel=cancel, cache_dir=cache, endpoint=hub.url)
        assert events[0].done == 0 and events[0].total == hub.total()
        assert all(e.total == hub.total() for e in events)
        assert [e.done for e in events] == sorted(e.done for e in events)
        assert max(e.rate for e in events) > 0 and events[-1].seconds_left is not None
        # The weights' own partial (small files cut by the cancel leave empty partials of their own).
        partial = cache / "models--org--name/blobs" / (FakeHub.etag(BIG, repo_files[BIG]) + ".incomplete")
        kept = partial.stat().st_size
        assert CHUNK <= kept < len(repo_files[BIG])

        # The next fetch asks only for the rest, and reports the kept bytes as done from the start.
        hub.served.clear()
        events.clear()
        hub.stall_after.clear()
        folder = fetch(REPO, progress=events.append, cache_dir=cache, endpoint=hub.url)
        assert hub.served[BIG] == len(repo_files[BIG]) - kept
        assert events[0].done >= kept and events[-1].done == events[-1].total
        assert (folder / BIG).read_bytes() == repo_files[BIG]
        assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}


def test_a_cancel_before_the_first_byte_fetches_nothing(repo_files, tmp_path, online):
    cancel = threading.Event()
    cancel.set()
    with FakeHub(REPO, repo_files) as hub:
        with pytest.raises(DownloadCancelled):
            fetch(REPO, cancel=cancel, cache_dir=tmp_path / "hub", endpoint=hub.url)
        assert not hub.served


def test_an_unknown_id_says_so_and_only_checkpoint_files_are_fetched(repo_files, tmp_path, online):
    from core.errors import ModelNotFoundError

    with FakeHub(REPO, repo_files) as hub:
        with pytest.raises(ModelNotFoundError, match="no such model, or it is private or gated"):
            fetch("org/other", cache_dir=tmp_path / "hub", endpoint=hub.url)
        folder = fetch(REPO, cache_dir=tmp_path / "hub", endpoint=hub.url)
        assert sum(hub.served.values()) == hub.total() and not set(hub.served) & set(NOT_FETCHED)
        assert {p.name for p in folder.iterdir()} == {n for n in repo_files if n not in NOT_FETCHED}


def test_old_format_weights_are_fetched_only_where_there_are_no_safetensors(repo_files, tmp_path, online):
    old = {n: d for n, d in repo_files.items() if n != BIG} | {"pytorch_model.bin": b"\1" * 1000}
    with FakeHub(REPO, old | {"model.safetensors": b""}) as hub:
        fetch(REPO, cache_dir=tmp_path / "a", endpoint=hub.url)
        assert "pytorch_model.bin" not in hub.served
    with FakeHub(REPO, old) as hub:
        folder = fetch(REPO, cache_dir=tmp_path / "b", endpoint=hub.url)
        assert (folder / "pytorch_model.bin").read_bytes() == b"\1" * 1000


@pytest.mark.parametrize("ranges", [True, False], ids=["ranges", "server-ignores-ranges"])
def test_partial_files_that_cannot_be_resumed_start_over(repo_files, tmp_path, online, ranges):
    """A stray partial file longer than the file (not this content) is dropped; a server that answers
    a range with the whole file has it written from the start. Either way the files come out whole
    and the progress ends at the total."""
    cache = tmp_path / "hub"
    config, weights = repo_files["config.json"], repo_files[BIG]
    folder = cache / "models--org--name" / "blobs"
    folder.mkdir(parents=True)
    (folder / (FakeHub.etag("config.json", config) + ".incomplete")).write_bytes(b"x" * (len(config) + 10))
    (folder / (FakeHub.etag(BIG, weights) + ".incomplete")).write_bytes(weights[:3_000_000])
    events: list[DownloadProgress] = []
    with FakeHub(REPO, repo_files) as hub:
        hub.ranges = ranges
        snapshot = fetch(REPO, progress=events.append, cache_dir=cache, endpoint=hub.url)
        assert hub.served["config.json"] == len(config)
        assert hub.served[BIG] == len(weights) - (3_000_000 if ranges else 0)
    assert (snapshot / "config.json").read_bytes() == config and (snapshot / BIG).read_bytes() == weights
    assert events[-1].done == events[-1].total == hub.total()


def hub_backoff_waits(monkeypatch) -> list[float]:
    """The waits of huggingface_hub's retries from now on, recorded instead of slept (its backoff sleeps
    through its module's `time`)."""
    import huggingface_hub.utils._http as hub_http

    waits: list[float] = []

    class Clock:
        def __getattr__(self, name):
            return getattr(time, name)

        def sleep(self, seconds: float) -> None:
            waits.append(seconds)

    monkeypatch.setattr(hub_http, "time", Clock())
    return waits


def test_a_snapshot_cached_without_the_file_listing_is_used_when_the_hub_is_unreachable(
    repo_files, tmp_path, online, monkeypatch
):
    """Fetched before (by transformers, which keeps no listing): offline, it is loaded as it is,
    as it was before this module; with the listing kept, an incomplete one is refused instead, at once
    (no request retried: huggingface_hub's backoff made it wait 23 s)."""
    cache = tmp_path / "hub"
    with FakeHub(REPO, repo_files) as hub:
        folder = fetch(REPO, cache_dir=cache, endpoint=hub.url)
    shutil.rmtree(cache / "models--org--name" / "trees")
    waits = hub_backoff_waits(monkeypatch)
    assert fetch(REPO, cache_dir=cache, endpoint="http://127.0.0.1:9") == folder

    from core.errors import ModelNotFoundError

    with FakeHub(REPO, repo_files) as hub:
        fetch(REPO, cache_dir=cache, endpoint=hub.url)  # the listing kept again
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelNotFoundError, match="cannot be reached"):
        fetch(REPO, cache_dir=cache, endpoint="http://127.0.0.1:9")
    # said at once: the listing after the cached refs/ retried 5 times first (1 + 2 + 4 + 8 + 8 s)
    assert waits == []
