"""Decode steps of many sessions batched into one forward over the cache pool.

A decode step is memory-bound: it reads all the weights to produce one token. With N streams on
one GPU, N separate steps read the weights N times; one batched step reads them once for all.
`BatchedDecode.run` takes one row per decoding session (its token, position, slot and the slot's
first free index) and runs them as one forward; the engine's scheduler (`core.scheduler`) decides
which rows go together (continuous batching: a session joins when its prefill is done and leaves
when its reply ends).

Each row attends to its own slot of the pool (`core.pool.CachePool`), up to its own length, at its
own position; nothing else in the session changes, so a session gives the same tokens batched as
alone (tests/test_batch.py checks it token for token, with sessions that start late, stop early and
evict at different times).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from core.model import StreamModel
from core.paged_attention import PoolKV
from core.pool import CachePool


@dataclass
class DecodeRow:
    """One session's next decode step."""

    slot: int
    token: torch.Tensor  # [1] on the model's device
    position: float
    write_at: int  # the slot's first free index: where this token's keys and values go
    # The session's own captured single-session step (core/decode_step.py), for when this row is the
    # only one: it reads the slot in place, where a batched step gathers it (faster for one stream).
    solo: Callable[[torch.Tensor, float], torch.Tensor] | None = None


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
        # key_states [B, kv, 1, D]: one new token per row. Attention reads the slots in place
        # (core/paged_attention.py): it gets the whole layer of the pool and each row's slot and length.
        self.keys[self.slots, :, self.write_at] = key_states[:, :, 0]
        self.values[self.slots, :, self.write_at] = value_states[:, :, 0]
        pool = PoolKV(self.keys, self.values, self.slots, self.write_at + 1)
        return pool, pool

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


class BatchedDecode:
    """One forward for the decode steps of many sessions: row b feeds one token into its own slot.

    It holds no threads: the engine's scheduler (`core.scheduler.Scheduler`) gathers the rows and calls
    `run` from its model thread. With `use_graphs` (a CUDA device), a batch of B rows is padded to the
    next power of two with rows that write into the pool's scratch slot, and each padded size is
    captured once as a CUDA graph and replayed after: a batched step then costs the GPU's time, not
    Python's launches."""

    def __init__(
        self, model: StreamModel, pool: CachePool, use_graphs: bool = False, fixed_rows: int | None = None
    ) -> None:
        """`fixed_rows`: every forward has exactly this many rows (a larger batch runs as several), so a
        row's arithmetic (the matmuls' kernels and summation order are chosen by their shapes) never
        depends on how many other sessions are decoding: the scheduler's batch-invariant mode."""
        self.model, self.pool, self.use_graphs = model, pool, use_graphs
        self.fixed_rows = fixed_rows
        self.pad = use_graphs  # pad to a power of two (graphs need it; tests turn it on without them)
        self._buckets: dict[int, _Bucket] = {}
        self._modules = model.modules_version  # the model's modules the graphs were captured with
        self._span = torch.arange(pool.tokens, device=model.device)
        self.batches = 0  # forwards run, and the rows they carried (for tests and reports)
        self.rows = 0
        self.padded = 0  # scratch rows added to fill batches to their padded size

    def run(self, rows: list[DecodeRow]) -> torch.Tensor:
        """The next logits [len(rows), vocab] (float32) of every row, each written into its own slot."""
        if self._modules != self.model.modules_version:  # switched to the compiled modules: capture anew
            self._modules = self.model.modules_version
            for old in self._buckets.values():
                old.graph, old.logits = None, None
        if self.fixed_rows and len(rows) > self.fixed_rows:
            step = self.fixed_rows
            return torch.cat([self.run(rows[i : i + step]) for i in range(0, len(rows), step)])
        bucket = self._fill(rows)
        if not self.use_graphs:
            logits = self._forward(bucket)[: len(rows)]
        else:
            if bucket.graph is None:
                self._capture(bucket)
            bucket.graph.replay()
            logits = bucket.logits[: len(rows)].clone()  # the next replay overwrites the buffer
        self.batches += 1
        self.rows += len(rows)
        return logits

    def _fill(self, batch: list[DecodeRow]) -> _Bucket:
        """The batch's rows in fixed-shape inputs: exactly its size eagerly, the next power of two with
        graphs, `fixed_rows` when set (padding rows write at index 0 of the scratch slot, and their
        logits are ignored)."""
        n = len(batch)
        size = self.fixed_rows or (1 << (n - 1).bit_length() if self.pad else n)
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

    def _forward(self, bucket: _Bucket, captured: bool = False) -> torch.Tensor:
        model = self.model
        mask = (self._span[None, :] <= bucket.write_at[:, None]).view(bucket.size, 1, 1, -1)  # its own length
        cache = _PoolBatch(self.pool, bucket.slots, bucket.write_at)
        embeds = model.embed(bucket.tokens)
        return model.forward_rows(embeds, bucket.positions.expand(3, -1), cache, mask, captured=captured)

    def _capture(self, bucket: _Bucket) -> None:
        """Run the step twice on a side stream (lazy initialisation happens outside the graph; the rows
        write the same keys and values each time), then capture it. Other threads keep launching their
        own work (sampling, frame resizing) meanwhile: the capture only checks this thread's calls."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._forward(bucket, captured=True)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            bucket.logits = self._forward(bucket, captured=True)
        bucket.graph = graph
