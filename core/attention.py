"""The attention functions the engine registers with transformers' `AttentionInterface`.

Stock SDPA dispatch is tuned for training-shaped calls; the engine's three shapes want better:

- `causal_prefill_attention` (language model, prefill): a chunk's ~750 new tokens attend to the
  whole cache and causally among themselves. Stock transformers materialises that mask and
  repeats each key head 7 times; here the mask is PyTorch's lower-right `CausalBias`, which runs
  fused kernels with no mask in memory, and the key heads are shared through `enable_gqa`.
- `matmul_decode_attention` (language model, inside the captured decode step): one query row
  against the whole masked cache as two batched matmuls around a float32 softmax, so every key
  and value is read once at full bandwidth (fused kernels without split-K leave the GPU idle).
- `batched_varlen_attention` (vision tower): all of a chunk's 112-px windows in one batched call
  instead of one call per window.

Each is checked against stock attention by the equivalence tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.bias import causal_lower_right

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
    """
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
