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


class _Bucket:
    """Fixed-shape inputs of a batched step of `size` rows, and its CUDA graph once captured."""

    def __init__(self, size: int, device: torch.device) -> None:
        self.size = size
        self.tokens = torch.zeros(size, dtype=torch.long, device=device)
        self.positions = torch.zeros(size, dtype=torch.float32, device=device)
        self.slots = torch.zeros(size, dtype=torch.long, device=device)
        self.write_at = torch.zeros(size, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None  # the graph's output buffer


class DecodeBatcher:
    """Runs the decode steps of an engine's sessions together; see the module docstring.

    With `use_graphs` (a CUDA device), a batch of B rows is padded to the next power of two with rows
    that write into the pool's scratch slot, and each padded size is captured once as a CUDA graph and
    replayed after: a batched step then costs the GPU's time, not Python's launches."""

    def __init__(
        self, model: StreamModel, pool: CachePool, lock: threading.Lock, use_graphs: bool = False
    ) -> None:
        self.model, self.pool, self.lock, self.use_graphs = model, pool, lock, use_graphs
        self.pad = use_graphs  # pad to a power of two (graphs need it; tests turn it on without them)
        self._buckets: dict[int, _Bucket] = {}
        self._span = torch.arange(pool.tokens, device=model.device)
        self._cond = threading.Condition()
        self._decoding = 0  # sessions between `join` and `leave`
        self._waiting: list[_Request] = []
        self._running = False  # a batch is being computed (by one of the waiting threads)
        self.batches = 0  # forwards run, and the rows they carried (for tests and reports)
        self.rows = 0
        self.padded = 0  # scratch rows added to fill batches to their padded size

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
        try:
            bucket = self._fill(batch)
            with self.lock:
                if not self.use_graphs:
                    logits = self._forward(bucket)
                else:
                    if bucket.graph is None:
                        self._capture(bucket)
                    bucket.graph.replay()
                    logits = bucket.logits[: len(batch)].clone()  # the next replay overwrites the buffer
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

    def _fill(self, batch: list[_Request]) -> _Bucket:
        """The batch's rows in fixed-shape inputs: exactly its size eagerly, the next power of two with
        graphs (padding rows write at index 0 of the scratch slot, and their logits are ignored)."""
        n = len(batch)
        size = 1 << (n - 1).bit_length() if self.pad else n
        bucket = self._buckets.get(size)
        if bucket is None:
            bucket = self._buckets[size] = _Bucket(size, self.model.device)
        bucket.tokens[:n].copy_(torch.cat([r.token.view(1) for r in batch]))
        rows = torch.tensor(
            [[r.position, r.slot, r.write_at] for r in batch] + [[0.0, self.pool.scratch, 0]] * (size - n),
            dtype=torch.float64,
        )
        bucket.positions.copy_(rows[:, 0])
        bucket.slots.copy_(rows[:, 1].long())
        bucket.write_at.copy_(rows[:, 2].long())
        bucket.tokens[n:].zero_()
        self.padded += size - n
        return bucket

    def _forward(self, bucket: _Bucket) -> torch.Tensor:
        model = self.model
        mask = (self._span[None, :] <= bucket.write_at[:, None]).view(bucket.size, 1, 1, -1)  # its own length
        cache = _PoolBatch(self.pool, bucket.slots, bucket.write_at)
        return model.forward_rows(model.embed(bucket.tokens), bucket.positions.expand(3, -1), cache, mask)

    def _capture(self, bucket: _Bucket) -> None:
        """Run the step twice on a side stream (lazy initialisation happens outside the graph; the rows
        write the same keys and values each time), then capture it."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._forward(bucket)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            bucket.logits = self._forward(bucket)
        bucket.graph = graph
