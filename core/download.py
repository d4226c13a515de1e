"""A hub id made a local checkpoint folder: `fetch("org/name")` downloads it, showing progress.

    folder = fetch("mit-han-lab/StreamingVLM", progress=callback, cancel=threading.Event())

Everything goes through huggingface_hub and its cache (HF_HOME, or HF_HUB_CACHE); what this module
adds is the order of the steps and one-sentence errors:

- A complete snapshot already in the cache is used as is, without asking the hub: a later start
  costs no network round trip and works offline (`hf download org/name` refreshes it). With the
  hub unreachable, a snapshot cached without the hub's file listing (fetched by transformers, say)
  is used as it is too; one known to be incomplete is refused.
- Only the files a checkpoint is read for are fetched (configs, weights, tokenizer, chat
  template), not a repository's pictures, logs or training states; old-format `*.bin` weights only
  where there are no safetensors.
- Before a byte is fetched, the sizes in the hub's file metadata are held against the free space
  of the cache's disk; a download that does not fit is refused, saying how much it needs and where.
- A download cut short resumes. huggingface_hub 2.x writes each file to a temporary file of a
  random name that it deletes on failure (and leaves behind, unused, when the process is killed),
  so on its own a cut-off 4 GB shard starts again from zero. Here each missing file is fetched by
  huggingface_hub's `http_get` into `blobs/<etag>.incomplete` of the cache, asking for the bytes
  past what is there (its `resume_size`, an HTTP range), under the lock the hub takes for that blob;
  a complete file is renamed to its blob, and `snapshot_download` then links the snapshot to the
  blobs without fetching them again. The files go over plain HTTP (the resolve URL, redirects
  followed), not through hf_xet, whose transfers do not resume across processes.
- Progress: huggingface_hub's per-file progress hook (`tqdm_class`) feeds one `DownloadProgress`
  (bytes done, total, rate) to the caller's callback, from the download threads, one call at a
  time (so `done` only grows, unless a server ignores a resume's range and a file starts over).
- Cancel: setting the event stops every file at its next block (huggingface_hub reads 10 MB at a
  time, so this is immediate on a fast line and up to 10 MB late on a slow one); `fetch` raises
  `DownloadCancelled`, and the bytes on disk are kept for the next start.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import ModelNotFoundError, StreamVLMError

if TYPE_CHECKING:
    from huggingface_hub import ResolvedRevision
    from huggingface_hub.hf_api import RepoFile
    from rich.console import Console

log = logging.getLogger(__name__)

# The files a checkpoint folder is read for (configs, weights, tokenizer, chat template): a model
# repository's pictures, videos, logs and training states are not fetched.
CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
OLD_WEIGHTS = "*.bin"  # pytorch_model*.bin: fetched only from a repository without safetensors
LOCAL_FOLDER_HINT = "pass a local checkpoint folder instead (--model /path/to/folder)"


class DiskSpaceError(StreamVLMError):
    """A download does not fit on the disk of the Hugging Face cache."""


class DownloadCancelled(StreamVLMError):
    """`fetch` was cancelled; what was fetched is kept and the next `fetch` resumes from it."""


@dataclass(frozen=True)
class DownloadProgress:
    """Where a download stands: bytes of the files being fetched (resumed bytes count as done)."""

    repo_id: str
    done: int
    total: int
    rate: float  # bytes per second received since this download started (0 before the first block)

    @property
    def seconds_left(self) -> float | None:
        return (self.total - self.done) / self.rate if self.rate > 0 else None


ProgressCallback = Callable[[DownloadProgress], None]


@dataclass(frozen=True)
class _File:
    path: str  # in the repository
    size: int
    url: str
    blob: Path  # where the cache keeps its bytes: blobs/<etag>
    lock: Path  # the hub's lock for that blob

    @property
    def partial(self) -> Path:
        return self.blob.with_name(self.blob.name + ".incomplete")

    def on_disk(self) -> int:
        try:
            return self.partial.stat().st_size
        except FileNotFoundError:
            return 0


def cache_folder() -> Path:
    """Where huggingface_hub keeps downloaded models: HF_HUB_CACHE, by default HF_HOME/hub."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def fetch(
    repo_id: str,
    *,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    max_workers: int = 8,
    allow_patterns: list[str] | None = None,
) -> Path:
    """The local snapshot folder of hub model `repo_id`, downloaded (or completed) first if needed.

    `progress` is called from the download threads; `cancel`, once set, makes `fetch` raise
    `DownloadCancelled` within a block. Raises `ModelNotFoundError` (offline, unknown or gated
    id), `DiskSpaceError` (does not fit) or `DownloadCancelled`, each with one sentence.
    `allow_patterns`: fetch only these files (one model of a repository that holds several, as a
    voice's languages) instead of a checkpoint's files."""
    cache = Path(cache_dir) if cache_dir is not None else cache_folder()
    cancel = cancel or threading.Event()
    folder = _complete_in_cache(repo_id, revision, cache, allow_patterns)
    if folder is not None:
        return folder
    from huggingface_hub import constants, snapshot_download

    where = endpoint or constants.ENDPOINT
    try:
        resolved, files, allow = _plan(repo_id, revision, cache, where, token, cancel, allow_patterns)
        missing = [f for f in files if not f.blob.exists()]
        total = sum(f.size for f in missing)
        need = total - sum(min(f.on_disk(), f.size) for f in missing)
        _check_space(repo_id, need, cache)
        if missing:
            _download(repo_id, missing, total, cache, where, token, progress, cancel, max_workers)
        # Every blob is there now: the hub links the snapshot (and records the listing that tells
        # a later start the snapshot is complete) without fetching a byte.
        folder = snapshot_download(
            repo_id,
            revision=resolved,
            cache_dir=cache,
            endpoint=where,
            token=token,
            allow_patterns=allow,
            tqdm_class=_Quiet,  # type: ignore[arg-type]
        )
    except StreamVLMError:
        raise
    except Exception as exc:
        error = _user_error(repo_id, exc, where, cache)
        if error is exc:
            raise  # not the user's to fix: a bug, with its traceback
        if _offline(exc) and (folder := _cached_as_is(repo_id, revision, cache)) is not None:
            # Fetched before this module kept the hub's file listing (by transformers, say): it
            # cannot be checked for completeness now, but it is what loading found before.
            log.warning("the hub at %s cannot be reached; using the cached %s as it is", where, folder)
            return folder
        raise error from None
    return Path(folder)


@contextlib.contextmanager
def progress_bar(console: Console) -> Iterator[ProgressCallback]:
    """A `progress` callback that shows a rich bar (bytes, rate, time left) on `console`, from the
    first byte of a download to the end of the block; nothing when nothing is downloaded."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    tasks: dict[str, int] = {}

    def show(event: DownloadProgress) -> None:
        if event.repo_id not in tasks:
            bar.start()
            tasks[event.repo_id] = bar.add_task(f"downloading {event.repo_id}", total=event.total)
        bar.update(tasks[event.repo_id], completed=event.done, total=event.total)

    try:
        yield show
    finally:
        if tasks:
            bar.stop()


# -- the steps -------------------------------------------------------------------------------------


def _complete_in_cache(
    repo_id: str, revision: str | None, cache: Path, allow_patterns: list[str] | None = None
) -> Path | None:
    """The cached snapshot if the hub's recorded file listing says it is complete, else None."""
    from huggingface_hub import get_cached_repo_tree, snapshot_download
    from huggingface_hub.errors import CachedRepoTreeNotFoundError, LocalEntryNotFoundError

    try:
        listing = get_cached_repo_tree(repo_id, revision=revision, cache_dir=cache)
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache,
            local_files_only=True,
            allow_patterns=allow_patterns or _wanted([f.path for f in listing]),
        )
    except (CachedRepoTreeNotFoundError, LocalEntryNotFoundError, ValueError):
        return None  # not cached, incomplete (IncompleteSnapshotError) or an id the hub rejects
    return Path(folder)


def _cached_as_is(repo_id: str, revision: str | None, cache: Path) -> Path | None:
    """A cached snapshot with a config, whether or not its completeness can be checked."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError):
        return None  # not cached, or known to be incomplete (IncompleteSnapshotError)
    return folder if (folder / "config.json").is_file() else None


def _plan(
    repo_id: str,
    revision: str | None,
    cache: Path,
    endpoint: str,
    token: str | bool | None,
    cancel: threading.Event,
    allow_patterns: list[str] | None = None,
) -> tuple[ResolvedRevision, list[_File], list[str]]:
    """The revision resolved to its commit, the files to have (their sizes, URLs and blobs from the hub's metadata) and the
    patterns that chose them."""
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import repo_folder_name
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    api = HfApi(endpoint=endpoint, token=token)
    # One request first, which fails at once where the hub cannot be reached: `resolve_revision` falls
    # back on the cache's refs/ then (and a commit hash needs no request at all), and the listing below
    # would retry with backoff for ~23 s before saying so.
    api.repo_info(repo_id, revision=revision)
    # Resolved once (and recorded in the cache's refs/, where a later start looks): every file
    # below, and the final linking, is of this one commit.
    resolved = api.resolve_revision(repo_id, revision=revision, cache_dir=cache)
    commit = resolved.resolved
    listing: list[RepoFile] = [
        f for f in api.list_repo_tree(repo_id, revision=commit, recursive=True) if isinstance(f, RepoFile)
    ]
    allow = allow_patterns or _wanted([f.path for f in listing])
    wanted = list(filter_repo_objects(listing, allow_patterns=allow, key=lambda f: f.path))
    storage = cache / repo_folder_name(repo_id=repo_id, repo_type="model")

    def describe(entry: RepoFile) -> _File:
        _check(cancel)
        url = hf_hub_url(repo_id, entry.path, revision=commit, endpoint=endpoint)
        meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
        if meta.etag is None:
            raise OSError(f"the hub sent no ETag for {entry.path}")
        size = meta.size if meta.size is not None else entry.size
        return _File(
            entry.path,
            size,
            url,
            storage / "blobs" / meta.etag,
            cache / ".locks" / storage.name / f"{meta.etag}.lock",
        )

    with ThreadPoolExecutor(max_workers=8) as pool:  # one HEAD request per file
        files = list(pool.map(describe, wanted))
    return resolved, files, allow


def _check_space(repo_id: str, need: int, cache: Path) -> None:
    folder = cache
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent  # the cache is created by the download: measure the disk it will be on
    free = shutil.disk_usage(folder).free
    if need > free:
        raise DiskSpaceError(
            f"model '{repo_id}' needs {_size(need)} more on disk but {cache} has {_size(free)} free "
            f"(HF_HOME={_hf_home()}); free some space or set HF_HOME to a disk with room, or "
            f"{LOCAL_FOLDER_HINT}"
        )


def _download(
    repo_id: str,
    files: list[_File],
    total: int,
    cache: Path,
    endpoint: str,
    token: str | bool | None,
    progress: ProgressCallback | None,
    cancel: threading.Event,
    max_workers: int,
) -> None:
    tally = _Tally(repo_id, total, {f.path: min(f.on_disk(), f.size) for f in files}, progress, cancel)
    log.info(
        "downloading %s from %s: %s in %d files into %s",
        repo_id,
        endpoint,
        _size(total - tally.done),
        len(files),
        cache,
    )
    tally.report()
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        futures = [pool.submit(_fetch_file, f, token, tally) for f in files]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()  # the first failure, raised here
        finally:
            tally.stop.set()  # a failure, a cancel or Ctrl-C: the other files stop at their next block
    seconds = time.monotonic() - tally.started
    log.info("downloaded %s: %s in %.0f s (%s/s)", repo_id, _size(tally.received), seconds, _size(tally.rate))


def _fetch_file(file: _File, token: str | bool | None, tally: _Tally) -> None:
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import WeakFileLock, build_hf_headers

    tally.check()
    file.lock.parent.mkdir(parents=True, exist_ok=True)
    file.blob.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(file.lock):  # another process on the same blob: one at a time
        if file.blob.exists():  # another process finished it
            tally.restart(file.path, file.size)
            return
        have = file.on_disk()
        if have > file.size:  # not this content: start over
            have = 0
            file.partial.unlink()
        tally.restart(file.path, have)
        with open(file.partial, "r+b" if file.partial.exists() else "wb") as out:
            out.seek(have)
            out.truncate()
            http_get(
                file.url,
                out,
                resume_size=have,
                headers=build_hf_headers(token=token),
                expected_size=file.size,
                displayed_filename=file.path,
                tqdm_class=lambda **bar: _FileBar(tally, file.path, bar.get("initial", 0)),  # type: ignore[arg-type]
            )
        os.replace(file.partial, file.blob)


class _Tally:
    """The bytes of one `fetch`, summed over its download threads, reported to the callback."""

    def __init__(
        self,
        repo_id: str,
        total: int,
        on_disk: dict[str, int],
        callback: ProgressCallback | None,
        cancel: threading.Event,
    ) -> None:
        self.repo_id, self.total, self.done = repo_id, total, sum(on_disk.values())
        self.callback, self.cancel = callback, cancel
        self.stop = threading.Event()  # set when one file fails: the others stop too
        self.received = 0
        self.started = time.monotonic()
        self._resumed = dict(on_disk)  # file -> bytes counted as done before its first block
        self._lock = threading.Lock()
        self._reporting = threading.Lock()

    @property
    def rate(self) -> float:
        seconds = time.monotonic() - self.started
        return self.received / seconds if self.received and seconds > 0 else 0.0

    def restart(self, path: str, initial: int) -> None:
        """The file's bytes start at `initial` after all: its partial file changed since the plan,
        was dropped, or the server ignored the range and sends it all."""
        with self._lock:
            self.done += initial - self._resumed[path]
            self._resumed[path] = initial

    def check(self) -> None:
        _check(self.cancel)
        if self.stop.is_set():
            raise DownloadCancelled("download stopped: another file of it failed")

    def add(self, n: int) -> None:
        self.check()
        with self._lock:
            self.done += n
            self.received += n
        self.report()

    def report(self) -> None:
        if self.callback is not None:
            with self._reporting:  # one at a time, so the callback sees `done` in order
                self.callback(DownloadProgress(self.repo_id, self.done, self.total, self.rate))


class _FileBar:
    """What huggingface_hub's `http_get` takes for a progress bar: it counts into the tally, and is
    where a cancel takes effect (an exception out of `update` ends the transfer)."""

    def __init__(self, tally: _Tally, path: str, initial: int) -> None:
        self.tally = tally
        tally.restart(path, initial)

    def __enter__(self) -> _FileBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: float | None = 1) -> None:
        self.tally.add(int(n or 0))


class _Quiet:
    """A progress bar that shows nothing, for `snapshot_download`'s linking pass."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.n, self.total = 0, kwargs.get("total")

    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


# -- pieces ----------------------------------------------------------------------------------------


def _check(cancel: threading.Event) -> None:
    if cancel.is_set():
        raise DownloadCancelled("download cancelled; the bytes fetched so far are kept for the next start")


def _wanted(paths: list[str]) -> list[str]:
    """The patterns of the files to fetch from a repository of `paths`."""
    if any(p.endswith(".safetensors") for p in paths):
        return CHECKPOINT_FILES
    return [*CHECKPOINT_FILES, OLD_WEIGHTS]


def _user_error(repo_id: str, exc: BaseException, endpoint: str, cache: Path) -> BaseException:
    """The hub's exception as one sentence that says what to do; a bug keeps its traceback."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
        RevisionResolutionError,
    )

    original = exc
    if isinstance(exc, RevisionResolutionError) and exc.__cause__ is not None:
        exc = exc.__cause__  # no commit for the id: the hub could not be asked (why is the cause)
    lead = f"model '{repo_id}' could not be found locally or downloaded"
    if isinstance(exc, OfflineModeIsEnabled):
        return ModelNotFoundError(
            f"{lead}: HF_HUB_OFFLINE is set and the cache at {cache} does not have it complete; "
            f"unset HF_HUB_OFFLINE to download it, or {LOCAL_FOLDER_HINT}"
        )
    if _offline(exc):
        return ModelNotFoundError(
            f"{lead}: the hub at {endpoint} cannot be reached (offline?); connect and run again (a "
            f"download resumes where it stopped), or {LOCAL_FOLDER_HINT}"
        )
    if isinstance(exc, (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError)):
        return ModelNotFoundError(
            f"{lead}: the hub at {endpoint} has no such model, or it is private or gated; check the id "
            f"(and HF_TOKEN for a gated model), or {LOCAL_FOLDER_HINT}"
        )
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        return ModelNotFoundError(
            f"{lead}: the hub at {endpoint} answered HTTP {status}; run again later (a download resumes "
            f"where it stopped), or {LOCAL_FOLDER_HINT}"
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return DiskSpaceError(
            f"the disk of {cache} filled up while downloading model '{repo_id}' (HF_HOME={_hf_home()}); "
            f"free some space and run again (the download resumes), or {LOCAL_FOLDER_HINT}"
        )
    if isinstance(exc, OSError):
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ModelNotFoundError(
            f"{lead} ({reason[:160]}); run again (a download resumes where it stopped), or {LOCAL_FOLDER_HINT}"
        )
    return original


def _offline(exc: BaseException) -> bool:
    """Whether `exc` says the hub could not be asked: offline mode, or no connection to it."""
    import httpx2
    from huggingface_hub.errors import OfflineModeIsEnabled, RevisionResolutionError

    if isinstance(exc, RevisionResolutionError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return isinstance(exc, (OfflineModeIsEnabled, httpx2.TransportError))


def _hf_home() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HOME)


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
