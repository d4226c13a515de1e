"""Reading a checkpoint's weight files ahead, while the process still imports torch and transformers.

A 7B checkpoint is 16.6 GB: on the H200's local disk (1.8-1.9 GB/s) that is a 9 s floor under every
start, and `python -m core run` reached a loaded model only at 14.9 s after starting, because the
reading began after ~5 s of imports, CUDA's start, the tokenizer and the processor (docs/performance.md,
"Startup"). `prefetch_weights` starts reading the weight files into the page cache on a thread as soon
as the commands know the folder (before torch is imported), so the disk works while the process
starts; `from_pretrained` then copies pages already in memory.

It only reads (into one reused buffer: the page cache keeps the data, the process does not), never
writes, and gives up quietly on any error: the loading that follows reads the files itself anyway.
It reads nothing where the weights would not stay cached: more than half the memory available now
(on a smaller machine the pages would be evicted before `from_pretrained` reached them, and other
programs' pages with them). No torch here: it runs before torch is imported.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin")
BLOCK_BYTES = 16 << 20  # one read: large enough for the disk's full rate, small enough to stop soon
MEMORY_SHARE = 0.5  # read ahead only what fits in this share of the memory available


class WeightPrefetch:
    """Reads `files` once, in order, on a daemon thread; `bytes_read` counts what it read."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.total_bytes = sum(f.stat().st_size for f in files)
        self.bytes_read = 0
        self.done = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="streamvlm-prefetch", daemon=True)

    def start(self) -> WeightPrefetch:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the read in progress (a process that gives up loading need not read on)."""
        self._stop.set()

    def _run(self) -> None:
        buffer = bytearray(BLOCK_BYTES)
        try:
            for path in self.files:
                with open(path, "rb", buffering=0) as file:
                    while not self._stop.is_set() and (n := file.readinto(buffer)):
                        self.bytes_read += n
                if self._stop.is_set():
                    break
        except OSError as exc:  # a file removed or unreadable: the loading will say so itself
            log.debug("weight prefetch stopped: %s", exc)
        finally:
            self.done.set()


_started: dict[Path, WeightPrefetch] = {}
_lock = threading.Lock()


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder, in name order (the shards' own order)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def prefetch_weights(name: str | Path | None) -> WeightPrefetch | None:
    """Start reading the weights of checkpoint folder `name` ahead, once per folder and process; the
    reader, or None when there is nothing to read ahead here: not an existing folder (a hub id is read
    where it is fetched), no weight files, or too large for the memory available."""
    if not name:
        return None
    try:
        folder = Path(name).expanduser().resolve()
        if not folder.is_dir():
            return None
        with _lock:
            if folder in _started:
                return _started[folder]
            files = weight_files(folder)
            if not files:
                return None
            reader = WeightPrefetch(files)
            available = psutil.virtual_memory().available
            if reader.total_bytes > MEMORY_SHARE * available:
                log.debug(
                    "weights %.1f GB: more than half the %.1f GB of memory available; not read ahead",
                    reader.total_bytes / 1e9,
                    available / 1e9,
                )
                return None
            _started[folder] = reader.start()
            return reader
    except OSError as exc:
        log.debug("weight prefetch not started: %s", exc)
        return None
