"""The cache pool: every session's KV cache preallocated at start, one slot per session.

A server carries many streams on one GPU; their caches must fit together, and the last thing a
running stream should meet is an allocation that fails. With a streaming cache policy a
session's cache has a hard bound (the sink, the windows, one chunk being prefilled and one reply
being decoded), so an engine can reserve `slots` caches of that bound at start, in one tensor per
keys and values laid out slot-major ([slot, layer, 1, kv_heads, tokens, head_dim]): a slot is the
exact buffer shape a single `StreamCache` uses, and all sessions' caches sit in one tensor for
batched steps across sessions. A session takes a free slot when it opens and gives it back when it
closes (on every path); when none is free, opening a session is refused with `CapacityError`.
`slots_that_fit` says how many slots the device's free memory holds.
"""

from __future__ import annotations

import logging
import math
import threading

import torch

from core.cache import CAPACITY_STEP
from core.config import CachePolicy, GenerationConfig, StreamConfig
from core.errors import StreamVLMError
from core.spec import ModelSpec

log = logging.getLogger(__name__)

# Tokens of one round besides its vision and reply: the turn headers, the time label (with a
# question), the prompt's close and the reply's marker; generous, since a slot must never overflow.
ROUND_TEXT_TOKENS = 64
PREFIX_TOKENS = 64  # the system turn and the previous-text header and footer, besides its content
MEMORY_SHARE = 0.9  # of the free device memory the pool may take (the rest: activations, graphs)
HOST_MEMORY_SHARE = 0.25  # of the free host memory, on a CPU (which the rest of the process shares)
MAX_AUTO_SLOTS = 256  # more streams than one GPU can compute for in real time, whatever their caches
MAX_AUTO_SLOTS_CPU = 8  # a CPU keeps up with a handful of streams at most


class CapacityError(StreamVLMError):
    """No cache slot is free: the engine already carries as many sessions as it has room for."""


def slot_tokens(
    spec: ModelSpec, policy: CachePolicy, stream: StreamConfig, generation: GenerationConfig
) -> int:
    """The most tokens one session's cache ever holds under `policy` (raises for a policy that never
    evicts: its cache grows with the stream and cannot be pooled)."""
    if not policy.evicts:
        raise StreamVLMError(
            "a cache that never evicts grows with the stream and cannot be given a fixed slot; "
            "use the streaming (or recompute) cache mode to serve many sessions"
        )
    groups = math.ceil(stream.frames_per_chunk / spec.vision.temporal_patch_size)
    vision = groups * (stream.max_pixels // spec.vision.factor**2) + 2  # + <|vision_start|> and end
    round_text = ROUND_TEXT_TOKENS + generation.max_new_tokens
    steady = policy.budget(
        fixed_tokens=PREFIX_TOKENS,
        vision_tokens_per_chunk=vision,
        text_tokens_per_round=round_text,
        bytes_per_token=0,
    ).tokens
    peak = steady + vision + round_text  # the next chunk is prefilled and decoded before the next eviction
    return -(-peak // CAPACITY_STEP) * CAPACITY_STEP


def slots_that_fit(bytes_per_slot: int, device: torch.device) -> int:
    """How many slots of `bytes_per_slot` a share of the device's free memory holds (at least one, at most
    what the device can compute for)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        share, most = MEMORY_SHARE, MAX_AUTO_SLOTS
    else:
        import psutil

        free, share, most = psutil.virtual_memory().available, HOST_MEMORY_SHARE, MAX_AUTO_SLOTS_CPU
    return max(1, min(most, int(free * share) // bytes_per_slot))


class CachePool:
    """`slots` caches of `tokens` tokens each, allocated once; `acquire`/`release` hand slots out."""

    def __init__(
        self,
        *,
        slots: int,
        tokens: int,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        if slots < 1:
            raise ValueError(f"a pool needs at least one slot (got {slots})")
        # One slot more than is handed out: the scratch slot, where padding rows of a batched step write.
        shape = (slots + 1, num_layers, 1, num_kv_heads, tokens, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.slots, self.tokens = slots, tokens
        self.scratch = slots  # never handed out
        self._free = list(range(slots - 1, -1, -1))  # popped from the end: slot 0 first
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        return 2 * self.keys.numel() * self.keys.element_size()

    @property
    def in_use(self) -> int:
        with self._lock:
            return self.slots - len(self._free)

    def acquire(self) -> int:
        with self._lock:
            if not self._free:
                raise CapacityError(
                    f"all {self.slots} cache slots are in use: this engine carries {self.slots} sessions at "
                    "once; close one, or start the server with more memory or a smaller cache policy"
                )
            return self._free.pop()

    def release(self, slot: int) -> None:
        with self._lock:
            if slot in self._free or not 0 <= slot < self.slots:
                raise ValueError(f"slot {slot} is not in use")
            self._free.append(slot)

    def buffers(self, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The slot's keys and values, each [layers, 1, kv_heads, tokens, head_dim] (views into the pool)."""
        return self.keys[slot], self.values[slot]
