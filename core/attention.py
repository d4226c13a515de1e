"""The attention functions the engine registers with transformers' `AttentionInterface`.

Stock SDPA dispatch is tuned for training-shaped calls; the engine's three shapes want better:

- `causal_prefill_attention` (language model, prefill): a chunk's ~750 new tokens attend to the
  whole cache and causally among themselves. Stock transformers materialises that mask and
  repeats each key head 7 times; here the mask is PyTorch's lower-right `CausalBias`, which runs
  fused kernels with no mask in memory, and the key heads are shared through `enable_gqa`.
- `matmul_decode_attention` (language model, inside the captured decode step): one query row
  against the whole masked cache as two batched matmuls around a float32 softmax, so every key
  and value is read once at full bandwidth (fused kernels without split-K leave the GPU idle).
- `ragged_prefill_attention` (language model, the prefills of several sessions in one forward,
  core/ragged.py): each segment of new tokens attends to its own session's cache, causally among
  itself; on a GPU all segments go to one FlashAttention varlen call (thread blocks for every
  session at once), elsewhere one fused call per segment.
- `batched_varlen_attention` (vision tower): all of a chunk's 112-px windows in one batched call
  instead of one call per window.

Each is checked against stock attention by the equivalence tests.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right

from core.paged_attention import PoolKV, decode_attention
from core.ragged import RaggedKV

CAUSAL_PREFILL = "streamvlm_causal"
MATMUL_DECODE = "streamvlm_decode_matmul"
# transformers passes packed segment bounds (cu_seqlens) to implementations with "flash" in their name.
VARLEN_VISION = "flash_streamvlm_batched_sdpa"


def causal_prefill_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """q [1, Hq, n, D] after a cache: k/v [1, Hkv, S, D], S >= n, the last n being the new tokens."""
    if isinstance(key, RaggedKV):
        return ragged_prefill_attention(query, key, value, scaling), None
    n, total = query.shape[2], key.shape[2]
    gqa = query.shape[1] != key.shape[1]
    if attention_mask is not None:  # a caller's own mask wins
        mask = attention_mask
    elif n == 1:
        mask = None  # one new token sees everything
    else:
        mask = causal_lower_right(n, total)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2), None


def ragged_prefill_attention(
    query: torch.Tensor, keys: RaggedKV, values: RaggedKV, scaling: float | None
) -> torch.Tensor:
    """q [1, Hq, sum(n_i), D]; segment i's n_i queries attend to keys.tensors[i] [1, Hkv, S_i, D] (its
    cache, the last n_i being its own new tokens) lower-right causally -> [1, sum(n_i), Hq, D]."""
    if query.is_cuda and len(keys.tensors) > 1 and _varlen_usable(query):
        return _packed_varlen(query, keys, values, scaling)
    gqa = query.shape[1] != keys.tensors[0].shape[1]
    outs, start = [], 0
    for k, v, n in zip(keys.tensors, values.tensors, keys.query_lengths, strict=True):
        mask = causal_lower_right(n, k.shape[2]) if n > 1 else None
        q = query[:, :, start : start + n]
        outs.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=gqa))
        start += n
    return torch.cat(outs, dim=2).transpose(1, 2)


def _packed_varlen(
    query: torch.Tensor, keys: RaggedKV, values: RaggedKV, scaling: float | None
) -> torch.Tensor:
    """All segments in one FlashAttention varlen call: queries and caches packed token-major (the caches
    copied once per layer: a few percent of the prefill's time, for thread blocks that fill the GPU).
    FlashAttention-2 shares key heads natively and aligns a causal mask to each segment's last key."""
    packing = keys.packing
    if not packing:  # the same bounds at every layer: built on the host once per forward
        device = query.device
        q_bounds = [0, *itertools.accumulate(keys.query_lengths)]
        k_bounds = [0, *itertools.accumulate(keys.key_lengths)]
        packing["cu_q"] = torch.tensor(q_bounds, dtype=torch.int32).to(device, non_blocking=True)
        packing["cu_k"] = torch.tensor(k_bounds, dtype=torch.int32).to(device, non_blocking=True)
        packing["max_q"], packing["max_k"] = max(keys.query_lengths), max(keys.key_lengths)
    q = query[0].transpose(0, 1)  # [sum n, Hq, D]
    k = torch.cat([t[0].transpose(0, 1) for t in keys.tensors])  # [sum S, Hkv, D]
    v = torch.cat([t[0].transpose(0, 1) for t in values.tensors])
    # The op under `torch.nn.attention.varlen.varlen_attn`, whose wrapper (PyTorch 2.11) does not yet
    # pass fewer key heads through.
    out = torch.ops.aten._flash_attention_forward(
        q,
        k,
        v,
        packing["cu_q"],
        packing["cu_k"],
        packing["max_q"],
        packing["max_k"],
        0.0,
        True,
        False,
        scale=scaling,
    )[0]
    return out[None]  # [1, sum n, Hq, D]


_VARLEN: dict[torch.device, bool] = {}


def _varlen_usable(query: torch.Tensor) -> bool:
    """FlashAttention varlen (a GPU that runs PyTorch's FlashAttention, half precision), checked once per
    device against per-segment SDPA on a small case with shared key heads and cached keys."""
    device = query.device
    if query.dtype not in (torch.float16, torch.bfloat16):
        return False
    if device not in _VARLEN:
        _VARLEN[device] = _probe_varlen(device, query.dtype)
    return _VARLEN[device]


def _probe_varlen(device: torch.device, dtype: torch.dtype) -> bool:
    try:
        gen = torch.Generator(device="cpu").manual_seed(0)
        lengths, cached = [5, 9], [7, 0]
        q = torch.randn(1, 4, sum(lengths), 64, generator=gen).to(device, dtype)
        ks = [torch.randn(1, 2, c + n, 64, generator=gen).to(device, dtype) for c, n in zip(cached, lengths)]
        vs = [torch.randn(1, 2, c + n, 64, generator=gen).to(device, dtype) for c, n in zip(cached, lengths)]
        keys, values = RaggedKV(ks, lengths), RaggedKV(vs, lengths)
        fast = _packed_varlen(q, keys, values, None)
        outs, start = [], 0
        for k, v, n in zip(ks, vs, lengths):
            mask = causal_lower_right(n, k.shape[2])
            outs.append(
                F.scaled_dot_product_attention(
                    q[:, :, start : start + n], k, v, attn_mask=mask, enable_gqa=True
                )
            )
            start += n
        reference = torch.cat(outs, dim=2).transpose(1, 2)
        return bool(torch.allclose(fast.float(), reference.float(), atol=2e-2, rtol=2e-2))
    except Exception:  # no FlashAttention build for this GPU, or an older PyTorch: per-segment SDPA
        return False


def matmul_decode_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """q [1, Hq, n, D] against k/v [1, Hkv, S, D] with a bool mask [1, 1, n, S] -> [1, n, Hq, D].

    The query heads that share a key head are stacked as rows, so each key and value is read once.
    A batched step's rows (`PoolKV`: each its own slot of the cache pool) go to the paged kernel.
    """
    if isinstance(key, PoolKV):
        return decode_attention(query, key, scaling if scaling is not None else query.shape[-1] ** -0.5), None
    batch, q_heads, n, dim = query.shape
    kv_heads = key.shape[1]
    group = q_heads // kv_heads
    q = query.view(batch, kv_heads, group * n, dim)
    scale = scaling if scaling is not None else dim**-0.5
    scores = torch.matmul(q, key.transpose(-1, -2)).float() * scale  # [1, Hkv, group*n, S]
    if attention_mask is not None:
        mask = attention_mask if n == 1 else attention_mask.repeat_interleave(group, dim=2)
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1).to(value.dtype)
    out = torch.matmul(probs, value).view(batch, q_heads, n, dim)
    return out.transpose(1, 2), None


def batched_varlen_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    scaling: float | None = None,
    dropout: float = 0.0,
    cu_seq_lens_q: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Bidirectional attention within packed segments; q/k/v [1, heads, tokens, dim] -> [1, tokens, heads, dim]."""
    _, heads, tokens, dim = query.shape
    bounds = cu_seq_lens_q.tolist() if cu_seq_lens_q is not None else [0, tokens]  # host tensor: no sync
    lengths = {b - a for a, b in zip(bounds, bounds[1:])}
    if len(lengths) == 1:
        n, length = len(bounds) - 1, lengths.pop()

        def windows(x: torch.Tensor) -> torch.Tensor:
            return x.view(heads, n, length, dim).transpose(0, 1)  # [windows, heads, length, dim]

        out = F.scaled_dot_product_attention(windows(query), windows(key), windows(value), scale=scaling)
        out = out.transpose(0, 1).reshape(1, heads, tokens, dim)
    else:  # windows cut by the frame edge: one call per segment, as stock transformers does
        out = torch.cat(
            [
                F.scaled_dot_product_attention(
                    query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], scale=scaling
                )
                for a, b in zip(bounds, bounds[1:])
                if b > a
            ],
            dim=2,
        )
    return out.transpose(1, 2), None


def register() -> None:
    """Make the three functions known to transformers by name (idempotent)."""
    from transformers import AttentionInterface

    for name, fn in (
        (CAUSAL_PREFILL, causal_prefill_attention),
        (MATMUL_DECODE, matmul_decode_attention),
        (VARLEN_VISION, batched_varlen_attention),
    ):
        if name not in AttentionInterface._global_mapping:
            AttentionInterface.register(name, fn)
