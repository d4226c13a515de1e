"""The compact KV cache: preallocated per-layer buffers, region bookkeeping and eviction.

The cache holds the conversation as a list of spans, each a run of tokens of one `Part` of one
round (round -1 is the fixed prefix). Once per chunk, before the new user turn, `evict` applies
the policy (docs/architecture.md):

- kept forever: the system turn, the previous-text header and footer, and the first
  `sink_tokens` tokens of the previous-text content (the attention sink);
- the vision of the last `vision_window_chunks` chunks;
- the text of the last `text_window_replies` rounds in place; an older reply's words move, with
  their cached keys and values (no recomputation), to the end of the previous-text content,
  whose part beyond the sink is a window of its last `text_window_tokens` tokens.

Kept spans are then packed to the front of the buffers in conversation order and renumbered as
a fresh prompt; each moved span's keys get one delta rotation (core/positions.py). Buffers are
allocated once and grow only if a stream needs more room than any chunk before it.

`EvictionMode.NONE` never evicts (full attention); `EvictionMode.RECOMPUTE` keeps the same spans
but drops all keys and values, and the session feeds the kept tokens again from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from core.config import CachePolicy, EvictionMode
from core.conversation import Part, Piece
from core.errors import StreamVLMError
from core.kernels import rotate_into
from core.positions import piece_positions, rotation

PREFIX_ROUND = -1
CAPACITY_STEP = 256  # buffer sizes are multiples of this (aligned attention masks, few distinct shapes)
_ROUND_FRAME = {Part.TURN_OPEN, Part.PROMPT_CLOSE}  # kept while the round keeps vision or text


class CacheFullError(StreamVLMError):
    """A chunk does not fit a cache whose buffers cannot grow (a pool slot)."""


@dataclass
class Span:
    """A run of `length` cached tokens of one part of one round."""

    part: Part
    round: int
    slot: int  # index of its first token in the buffers
    pos: float  # position cursor at its first token
    extent: float  # how far it advances the cursor
    ids: list[int] = field(default_factory=list)
    grid: tuple[int, int, int] | None = None  # merged video grid, for vision spans
    dt: float = 0.0  # temporal position step, for vision spans

    @property
    def length(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class CacheMark:
    """A cache's bookkeeping at one moment (`StreamCache.mark`), to go back to (`roll_back`). It stays
    true to the buffers while the keys and values of the tokens it counts stay where they are."""

    spans: tuple[Span, ...]
    cursor: float
    length: int


@dataclass(frozen=True)
class Eviction:
    """What one eviction did."""

    dropped: int  # tokens removed from the cache
    retired: int  # reply tokens moved into the previous text
    moved: int  # tokens whose slot or position changed
    refeed: list[Span]  # RECOMPUTE only: spans to feed again, in order
    # Where a chunk that fails after this eviction (out of GPU memory in its prefill or reply, part of
    # its tokens written in some layers) rolls the cache back to: the cache as this eviction left it,
    # or as it was before a RECOMPUTE eviction (whose next eviction feeds everything kept again from
    # ids, never reading the old keys). Evicting again for the same round then plans the same.
    undo: CacheMark | None = None


class StreamLayer(CacheLayerMixin):
    """One layer's keys and values in preallocated buffers [1, kv_heads, capacity, head_dim]."""

    is_compileable = False
    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.keys, self.values = keys, values
        self.device = keys.device
        self.length = 0
        self.is_initialized = True
        # Set by the static decode step (core/decode_step.py): write at this device index and return
        # the whole buffers, so every shape is fixed and the step can be captured in a CUDA graph.
        self.write_at: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Buffers exist from construction."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.write_at is not None:
            self.keys.index_copy_(2, self.write_at, key_states)
            self.values.index_copy_(2, self.write_at, value_states)
            return self.keys, self.values
        end = self.length + key_states.shape[-2]
        self.keys[:, :, self.length : end] = key_states
        self.values[:, :, self.length : end] = value_states
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_mask_sizes(self, query_length, *args) -> tuple[int, int]:
        q = query_length.shape[0] if isinstance(query_length, torch.Tensor) else int(query_length)
        return self.length + q, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.length = 0


class StreamCache(Cache):
    """A transformers `Cache` whose layers the policy above edits in place between forwards."""

    def __init__(
        self,
        *,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        inv_freq: torch.Tensor,
        policy: CachePolicy,
        capacity: int = 4 * CAPACITY_STEP,
        fused_rotation: bool = True,
        buffers: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """`fused_rotation`: evictions rotate moved keys with the Triton kernel where it runs.
        `buffers`: keys and values [layers, 1, kv_heads, tokens, head_dim] to use instead of allocating
        (a slot of `core.pool.CachePool`); they never grow, and a chunk that does not fit is an error."""
        # All layers in one tensor each for keys and values, so an eviction moves every layer in
        # one gather and one fused rotation; each layer sees its own view [1, kv_heads, capacity, head_dim].
        shape = (num_layers, 1, num_kv_heads, capacity, head_dim)
        if buffers is None:
            self.key_buffer = torch.zeros(shape, dtype=dtype, device=device)
            self.value_buffer = torch.zeros(shape, dtype=dtype, device=device)
        else:
            self.key_buffer, self.value_buffer = buffers
            capacity = self.key_buffer.shape[3]
        self.fixed = buffers is not None
        layers = [StreamLayer(self.key_buffer[i], self.value_buffer[i]) for i in range(num_layers)]
        super().__init__(layers=layers)
        self.policy = policy
        self.inv_freq = inv_freq
        self.spans: list[Span] = []
        self.cursor = 0.0  # position of the next token
        self.capacity = capacity
        self.fused_rotation = fused_rotation

    # -- the transformers Cache interface (sizes for the mask) ------------------------------------

    def get_mask_sizes(self, query_length, layer_idx: int = 0) -> tuple[int, int]:
        return self.layers[layer_idx].get_mask_sizes(query_length)

    # -- bookkeeping -------------------------------------------------------------------------------

    @property
    def length(self) -> int:
        """Tokens whose keys and values are in the buffers."""
        return self.layers[0].length

    @property
    def reserved(self) -> int:
        """Tokens registered in spans (equals `length` between forwards)."""
        return sum(s.length for s in self.spans)

    def token_ids(self) -> list[int]:
        """The cached tokens in conversation order (vision tokens appear as the video pad id)."""
        return [i for s in self.spans for i in s.ids]

    def counts(self) -> dict[Part, int]:
        out: dict[Part, int] = {}
        for s in self.spans:
            out[s.part] = out.get(s.part, 0) + s.length
        return out

    def mark(self) -> CacheMark:
        """The bookkeeping as it is now (copies: later appends do not change it)."""
        return CacheMark(tuple(replace(s, ids=list(s.ids)) for s in self.spans), self.cursor, self.length)

    def roll_back(self, mark: CacheMark) -> None:
        """Forget every token registered or written after `mark` was taken; valid only if no eviction has
        moved keys since (see `Eviction.undo`)."""
        self.spans = [replace(s, ids=list(s.ids)) for s in mark.spans]
        self.cursor = mark.cursor
        for layer in self.layers:
            layer.length = mark.length

    def ensure_capacity(self, extra: int) -> None:
        """Grow the buffers (rarely: only past the largest size seen so far) to fit `extra` more tokens."""
        need = self.reserved + extra
        if need <= self.capacity:
            return
        if self.fixed:
            raise CacheFullError(
                f"this session's cache slot holds {self.capacity:,} tokens and the next chunk needs {need:,}; "
                "shorten the instruction or the previous text, or lower max_pixels"
            )
        capacity = -(-max(need, int(self.capacity * 1.5)) // CAPACITY_STEP) * CAPACITY_STEP
        length = self.length
        for name in ("key_buffer", "value_buffer"):
            old = getattr(self, name)
            new = old.new_zeros(*old.shape[:3], capacity, old.shape[4])
            new[:, :, :, :length] = old[:, :, :, :length]
            setattr(self, name, new)
        for i, layer in enumerate(self.layers):
            layer.keys, layer.values = self.key_buffer[i], self.value_buffer[i]
        self.capacity = capacity

    def reserve(
        self,
        pieces: list[Piece],
        round: int,
        *,
        grid: tuple[int, int, int] | None = None,
        dt: float = 0.0,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """Register spans for tokens about to be fed and return their positions [3, n].

        A vision piece (<|vision_start|> pads <|vision_end|>) needs the merged `grid` and step `dt`.
        """
        self.ensure_capacity(sum(len(p) for p in pieces))
        positions = []
        for piece in pieces:
            if not piece.ids:
                continue
            vision = piece.part is Part.VISION
            if vision and grid is None:
                raise ValueError("a vision piece needs its merged grid")
            placed, extent = piece_positions(self.cursor, len(piece), grid if vision else None, dt, device)
            positions.append(placed)
            span = Span(piece.part, round, self.reserved, self.cursor, extent, list(piece.ids))
            if vision:
                span.grid, span.dt = grid, dt
            self._append(span)
            self.cursor += extent
        return torch.cat(positions, dim=1) if positions else torch.empty(3, 0, device=device)

    def _append(self, span: Span) -> None:
        last = self.spans[-1] if self.spans else None
        if (
            last is not None
            and last.part is span.part
            and last.round == span.round
            and span.part is not Part.VISION
        ):
            last.ids.extend(span.ids)
            last.extent += span.extent
        else:
            self.spans.append(span)

    def append_token(self, part: Part, round: int, token_id: int) -> float:
        """Register one token about to be fed by the static decode step; return its position."""
        self.ensure_capacity(1)
        position = self.cursor
        self._append(Span(part, round, self.reserved, position, 1.0, [token_id]))
        self.cursor += 1.0
        return position

    def advance(self, n: int) -> None:
        """Count `n` tokens the static decode step wrote into every layer."""
        for layer in self.layers:
            layer.length += n

    def split_tail(self, n: int, part: Part) -> None:
        """Relabel the last `n` tokens of the last span as `part` (the generated reply's closing ids)."""
        if n <= 0:
            return
        last = self.spans[-1]
        if n > last.length or last.part is Part.VISION:
            raise ValueError(f"cannot split {n} tokens off a {last.part.value} span of {last.length}")
        if n == last.length:
            last.part = part
            return
        head = last.length - n
        tail = Span(part, last.round, last.slot + head, last.pos + head, float(n), last.ids[head:])
        last.ids = last.ids[:head]
        last.extent = float(head)
        self.spans.append(tail)

    # -- eviction ------------------------------------------------------------------------------------

    def evict(self, round: int) -> Eviction:
        """Apply the policy before round `round` is added; return what changed."""
        if self.policy.mode is EvictionMode.NONE or not self.spans:
            return Eviction(0, 0, 0, [], self.mark())
        kept, retired = self._plan(round)
        before = self.reserved
        if self.policy.mode is EvictionMode.RECOMPUTE:
            undo = self.mark()
            self.spans, self.cursor = [], 0.0
            for layer in self.layers:
                layer.length = 0
            return Eviction(before - sum(s.length for s in kept), retired, 0, kept, undo)
        moved = self._pack(kept)
        return Eviction(before - self.reserved, retired, moved, [], self.mark())

    def _plan(self, round: int) -> tuple[list[Span], int]:
        """Which spans survive, in conversation order, with retired replies moved into the previous text."""
        policy = self.policy
        prefix: dict[Part, list[Span]] = {
            Part.SYSTEM: [],
            Part.PREV_OPEN: [],
            Part.PREV_CONTENT: [],
            Part.PREV_CLOSE: [],
        }
        rounds: list[Span] = []
        retired: list[Span] = []
        for span in self.spans:
            if span.round == PREFIX_ROUND:
                prefix[span.part].append(span)
                continue
            vision_kept = policy.keeps_vision(span.round, round)
            text_kept = policy.keeps_text(span.round, round)
            if span.part is Part.VISION:
                keep = vision_kept
            elif span.part in _ROUND_FRAME:
                keep = vision_kept or text_kept
            else:
                keep = text_kept
            if keep:
                rounds.append(span)
            elif span.part is Part.REPLY:
                retired.append(span)
        content = prefix[Part.PREV_CONTENT] + [
            replace(s, part=Part.PREV_CONTENT, round=PREFIX_ROUND) for s in retired
        ]
        content = _cut_middle(content, policy.sink_tokens, policy.text_window_tokens)
        kept = prefix[Part.SYSTEM] + prefix[Part.PREV_OPEN] + content + prefix[Part.PREV_CLOSE] + rounds
        return kept, sum(s.length for s in retired)

    def _pack(self, kept: list[Span]) -> int:
        """Move kept spans to the front in order, renumber them, delta-rotate the keys that moved."""
        src, delta, new_spans = [], [], []
        slot, cursor, first = 0, 0.0, None
        for span in kept:
            shift = cursor - span.pos
            if first is None and (span.slot != slot or shift != 0):
                first = slot
            src.append(np.arange(span.slot, span.slot + span.length))
            delta.append(np.full(span.length, shift))
            new_spans.append(replace(span, slot=slot, pos=cursor, ids=list(span.ids)))
            slot += span.length
            cursor += span.extent
        self.spans = []
        for span in new_spans:
            self._append_packed(span)
        self.cursor = cursor
        if first is None:
            for layer in self.layers:
                layer.length = slot
            return 0
        device = self.key_buffer.device
        index = torch.from_numpy(np.concatenate(src)[first:]).to(device)
        shifts = torch.from_numpy(np.concatenate(delta)[first:]).to(device)
        cos, sin = rotation(shifts, self.inv_freq.to(device))
        # Every layer at once; the gathers are copies, so overlapping moves are safe.
        keys = self.key_buffer.index_select(3, index)  # [layers, 1, kv_heads, moved, head_dim]
        self.value_buffer[:, :, :, first:slot] = self.value_buffer.index_select(3, index)
        rotate_into(self.key_buffer[:, :, :, first:slot], keys, cos, sin, fused=self.fused_rotation)
        for layer in self.layers:
            layer.length = slot
        return slot - first

    def _append_packed(self, span: Span) -> None:
        """Append a packed span, merging it into the previous one when they read as one run."""
        last = self.spans[-1] if self.spans else None
        if (
            last is not None
            and last.part is span.part
            and last.round == span.round
            and span.part is not Part.VISION
            and last.slot + last.length == span.slot
            and last.pos + last.extent == span.pos
        ):
            last.ids.extend(span.ids)
            last.extent += span.extent
        else:
            self.spans.append(span)


def _cut_middle(spans: list[Span], head: int, tail: int) -> list[Span]:
    """Keep the first `head` and last `tail` tokens of a run of text spans, splitting spans at the cut."""
    total = sum(s.length for s in spans)
    if total <= head + tail:
        return spans
    cut_start, cut_end = head, total - tail  # token offsets [cut_start, cut_end) go
    out, offset = [], 0
    for span in spans:
        lo, hi = offset, offset + span.length
        offset = hi
        keep_head = max(0, min(hi, cut_start) - lo)  # tokens of this span before the cut
        keep_tail = max(0, hi - max(lo, cut_end))  # tokens of this span after the cut
        if keep_head:
            out.append(replace(span, ids=span.ids[:keep_head], extent=float(keep_head)))
        if keep_tail:
            skip = span.length - keep_tail
            out.append(
                replace(
                    span,
                    slot=span.slot + skip,
                    pos=span.pos + skip,
                    ids=span.ids[skip:],
                    extent=float(keep_tail),
                )
            )
    return out
