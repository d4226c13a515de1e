"""A chunk that runs out of GPU memory fails alone: the session, the run and the server go on.

`GuardedSession` wraps any `CommentarySession`: a `torch.OutOfMemoryError` raised while one chunk is
pushed is caught, the allocator's cached blocks are given back (so memory returns to its level), one
error line says which chunk failed and why, and the chunk yields no commentary; `failed` counts them
and `last_failure` says why the last push failed (None when it did not), for a server's `chunk_done`.
Any other exception passes through unchanged.

The engine's cache must be as it was before the failed chunk for the next one to be right; an
out-of-memory error while the vision tower or the prefill's activations allocate leaves it so, since
the cache is written only by the prefill's attention layers (see the report of issue 21 for the
hook the engine needs to roll back a prefill that fails part-way).
"""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Sequence
from typing import Any

from core.types import Commentary

log = logging.getLogger(__name__)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` says the GPU ran out of memory: torch's out-of-memory error (its allocator), or a
    CUDA runtime error of `cudaErrorMemoryAllocation` (memory CUDA takes outside the allocator: a
    stream, a library handle, a graph; seen on the H200 with the GPU filled), which is not sticky: the
    context goes on. Torch is not imported for this."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    runtime_error = getattr(torch, "AcceleratorError", None)
    return runtime_error is not None and isinstance(exc, runtime_error) and "out of memory" in str(exc)


class GuardedSession:
    """`session` whose chunks fail one at a time on out-of-memory errors (see the module docstring)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.failed = 0
        self.last_failure: str | None = None

    def push(self, frames: Sequence[Any], t_start: float, t_end: float, **options: Any) -> list[Commentary]:
        self.last_failure = None
        try:
            return self.session.push(frames, t_start, t_end, **options)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            self.failed += 1
            self.last_failure = (
                f"chunk {t_start:.1f}-{t_end:.1f}s failed: the GPU ran out of memory; the stream goes on with "
                "the next chunk (lower --max-pixels or the sessions on this GPU if it repeats)"
            )
            log.error("%s", self.last_failure)
            del exc  # its traceback holds the frames' tensors
            _free()
            return []

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> GuardedSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:  # last_stats, cache, ... of the wrapped session
        return getattr(self.session, name)


def _free() -> None:
    if gc.isenabled():  # off: the host collects in a thread of its choosing (the app: app/collector.py)
        gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
