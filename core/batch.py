"""Decode steps of many sessions batched into one forward (continuous batching over the cache pool).

A decode step is memory-bound: it reads all the weights to produce one token. With N streams on
one GPU, N separate steps read the weights N times; one batched step reads them once for all. The
`DecodeBatcher` gives an engine's sessions that: each session pushes its chunks from a thread of
its own, as before, and when its reply is decoded each token's forward is handed to the batcher
(`step`), which runs one forward for every session that is waiting at that moment and hands each
its own logits. A session joins the batch when its prefill is done and leaves when its reply ends,
so a new chunk never waits for another session's whole reply; vision and prefill run under the
model lock between batched steps.

Each row attends to its own slot of the pool (`core.pool.CachePool`), up to its own length, at its
own position; nothing else in the session changes, so a session gives the same tokens batched as
alone (tests/test_batch.py checks it token for token, with sessions that start late, stop early and
evict at different times).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from core.model import StreamModel
from core.pool import CachePool

# How long a batch waits for sessions that are decoding but have not asked for their next step yet
# (they are sampling or keeping their books, which takes microseconds): waiting a little longer
# than that lets them join, waiting more would only add latency.
GATHER_SECONDS = 0.002


@dataclass
class _Request:
    slot: int
    token: torch.Tensor  # [1] on the model's device
    position: float
    write_at: int  # the slot's first free index: where this token's keys and values go
    done: threading.Event = field(default_factory=threading.Event)
    logits: torch.Tensor | None = None
    error: BaseException | None = None


class _PoolRows(CacheLayerMixin):
    """One layer of the pool seen as a batch: row b writes at `write_at[b]` of slot `slots[b]` and
    attends to that slot's whole buffer (the mask hides what is past its length)."""

    is_compileable = False
    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, slots: torch.Tensor, write_at: torch.Tensor):
        super().__init__()
        self.keys, self.values, self.slots, self.write_at = (
            keys,
            values,
            slots,
            write_at,
        )  # keys [S, kv, T, D]
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """The pool exists already."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        # key_states [B, kv, 1, D]: one new token per row.
        self.keys[self.slots, :, self.write_at] = key_states[:, :, 0]
        self.values[self.slots, :, self.write_at] = value_states[:, :, 0]
        return self.keys.index_select(0, self.slots), self.values.index_select(0, self.slots)

    def get_mask_sizes(self, query_length, *args) -> tuple[int, int]:
        return self.keys.shape[2], 0

    def get_seq_length(self) -> int:
        return int(self.write_at.max()) + 1

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        """Slots are reset by their sessions."""


class _PoolBatch(Cache):
    def __init__(self, pool: CachePool, slots: torch.Tensor, write_at: torch.Tensor) -> None:
        layers = [
            _PoolRows(pool.keys[:, i, 0], pool.values[:, i, 0], slots, write_at)
            for i in range(pool.keys.shape[1])
        ]
        super().__init__(layers=layers)


class DecodeBatcher:
    """Runs the decode steps of an engine's sessions together; see the module docstring."""

    def __init__(self, model: StreamModel, pool: CachePool, lock: threading.Lock) -> None:
        self.model, self.pool, self.lock = model, pool, lock
        self._cond = threading.Condition()
        self._decoding = 0  # sessions between `join` and `leave`
        self._waiting: list[_Request] = []
        self._running = False  # a batch is being computed (by one of the waiting threads)
        self.batches = 0  # forwards run, and the rows they carried (for tests and reports)
        self.rows = 0

    def join(self) -> None:
        """A session starts decoding a reply."""
        with self._cond:
            self._decoding += 1

    def leave(self) -> None:
        """A session's reply ended (or failed): the batch no longer waits for it."""
        with self._cond:
            self._decoding -= 1
            self._cond.notify_all()

    def step(self, slot: int, token: torch.Tensor, position: float, write_at: int) -> torch.Tensor:
        """Feed `token` at `position` into `slot` (its keys and values at index `write_at`); return the
        next logits [vocab] (float32). Blocks until a batch that carries this row has run."""
        request = _Request(slot, token, position, write_at)
        with self._cond:
            self._waiting.append(request)
            self._cond.notify_all()
            while not request.done.is_set():
                if not self._running and self._waiting:
                    # Lead the next batch: wait briefly for the other decoding sessions to ask.
                    self._cond.wait_for(
                        lambda: len(self._waiting) >= self._decoding or request.done.is_set(), GATHER_SECONDS
                    )
                    if request.done.is_set() or self._running:
                        continue
                    batch, self._waiting = self._waiting, []
                    self._running = True
                    self._cond.release()
                    try:
                        self._run(batch)
                    finally:
                        self._cond.acquire()
                        self._running = False
                        self._cond.notify_all()
                else:
                    self._cond.wait()
        if request.error is not None:
            raise request.error
        return request.logits

    def _run(self, batch: list[_Request]) -> None:
        model, device = self.model, self.model.device
        try:
            slots = torch.tensor([r.slot for r in batch], device=device)
            write_at = torch.tensor([r.write_at for r in batch], device=device)
            tokens = torch.cat([r.token.view(1) for r in batch])
            positions = torch.tensor([r.position for r in batch], dtype=torch.float32, device=device)
            span = torch.arange(self.pool.tokens, device=device)
            mask = (span[None, :] <= write_at[:, None]).view(len(batch), 1, 1, -1)  # each row: its own length
            with self.lock:
                logits = model.forward_rows(
                    model.embed(tokens), positions.expand(3, -1), _PoolBatch(self.pool, slots, write_at), mask
                )
            self.batches += 1
            self.rows += len(batch)
            for row, request in enumerate(batch):
                request.logits = logits[row]
        except BaseException as exc:  # every row of a failed batch hears why
            for request in batch:
                request.error = exc
        finally:
            for request in batch:
                request.done.set()
