"""The prefills of several sessions in one forward: ragged segments, each over its own cache.

With many streams on one GPU, each chunk's prefill (a user turn of ~800 tokens) run alone leaves
the GPU half idle: its attention makes too few thread blocks to fill the SMs, and its host work
(launches, the mask, embeddings) is paid once per session. Run together, the sessions' new tokens
are concatenated into one sequence; every matmul, norm and MLP sees them as one batch of rows, and
only attention is per session: segment i writes its keys and values into session i's cache (its
pool slot, at its own length, exactly as its solo prefill would) and attends to that cache only,
causally among its own new tokens (`core.attention.ragged_prefill_attention`).

`RaggedCache` is the transformers `Cache` the language model sees for such a forward; its layers
hand the attention function a `RaggedKV` (every segment's keys up to its end, plus the packed
lengths) instead of one tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from core.cache import StreamCache, StreamLayer


@dataclass
class RaggedKV:
    """Keys (or values) of every segment, each [1, kv_heads, cached + new, head_dim], and the segments'
    query lengths; `packing` holds the device-side bounds, built once per forward and shared by all layers."""

    tensors: list[torch.Tensor]
    query_lengths: list[int]
    packing: dict = field(default_factory=dict)

    @property
    def key_lengths(self) -> list[int]:
        return [t.shape[2] for t in self.tensors]


class _RaggedLayer(CacheLayerMixin):
    is_compileable = False
    is_sliding = False

    def __init__(self, layers: list[StreamLayer], lengths: list[int], packing: dict) -> None:
        super().__init__()
        self.parts, self.lengths, self.packing = layers, lengths, packing
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Every session's buffers exist already."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        keys, values, start = [], [], 0
        for layer, n in zip(self.parts, self.lengths, strict=True):
            k, v = layer.update(key_states[:, :, start : start + n], value_states[:, :, start : start + n])
            keys.append(k)
            values.append(v)
            start += n
        return RaggedKV(keys, self.lengths, self.packing), RaggedKV(values, self.lengths, self.packing)

    def get_mask_sizes(self, query_length, *args) -> tuple[int, int]:
        return max(p.length for p in self.parts) + int(query_length), 0

    def get_seq_length(self) -> int:
        return max(p.length for p in self.parts)

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        """The sessions own their caches."""


class RaggedCache(Cache):
    """Segment i of the forward's tokens (`lengths[i]` of them) appends to `caches[i]`, layer by layer."""

    def __init__(self, caches: list[StreamCache], lengths: list[int]) -> None:
        if len(caches) != len(lengths) or not caches:
            raise ValueError("a ragged forward needs one cache per segment")
        packing: dict = {}
        layers = [
            _RaggedLayer([c.layers[i] for c in caches], lengths, packing)
            for i in range(len(caches[0].layers))
        ]
        super().__init__(layers=layers)
