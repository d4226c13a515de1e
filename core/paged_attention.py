"""Decode attention that reads each row's keys and values in place, in its own slot of the cache pool.

A batched decode step (core/batch.py) has B rows, each attending to its own session's slot of the
pool, up to its own length. Gathering the B slots into one batch before attention copies every
slot's whole buffer per layer per step (a slot holds ~14k tokens, 28 MB per layer for a 7B model):
at 16 rows that copy moves more bytes than the weights. This kernel instead takes the pool and each
row's slot index and length, and reads only the live keys of that slot, once (flash-decoding: the
keys of a row are split across programs, each keeps a running max and sum, and a small reduction
combines the splits). The query heads that share a key head are handled by one program, so each
key is read once for all of them.

`paged_decode_attention` runs the Triton kernel on a GPU; `reference_decode_attention` is the same
arithmetic in PyTorch (gather, masked softmax), used on a CPU and by the tests that check the kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only install: the reference path runs
    triton = None

SPLITS = 16  # key splits per row and key head: B x kv_heads x 16 programs keep an H200's SMs busy
BLOCK_N = 64  # keys per inner step


@dataclass
class PoolKV:
    """One layer of the pool as a batched step's attention sees it: keys and values [slots, kv_heads,
    tokens, head_dim], and per row its slot and its number of live keys (the new token included)."""

    keys: torch.Tensor
    values: torch.Tensor
    slots: torch.Tensor  # [B] long
    lengths: torch.Tensor  # [B] long


def decode_attention(query: torch.Tensor, pool: PoolKV, scale: float) -> torch.Tensor:
    """query [B, Hq, 1, D] -> [B, 1, Hq, D]: each row against the live keys of its own slot."""
    if triton is not None and query.is_cuda:
        return paged_decode_attention(query[:, :, 0], pool, scale)[:, None]
    return reference_decode_attention(query[:, :, 0], pool, scale)[:, None]


def reference_decode_attention(q: torch.Tensor, pool: PoolKV, scale: float) -> torch.Tensor:
    """q [B, Hq, D] -> [B, Hq, D], in PyTorch: gather each row's slot, mask past its length."""
    keys, values = pool.keys.index_select(0, pool.slots), pool.values.index_select(0, pool.slots)
    batch, q_heads, dim = q.shape
    kv_heads, tokens = keys.shape[1], keys.shape[2]
    group = q_heads // kv_heads
    scores = torch.matmul(q.view(batch, kv_heads, group, dim), keys.transpose(-1, -2)).float() * scale
    live = torch.arange(tokens, device=q.device)[None, :] < pool.lengths[:, None]  # [B, T]
    scores = scores.masked_fill(~live[:, None, None, :], float("-inf"))
    probs = scores.softmax(dim=-1).to(values.dtype)
    return torch.matmul(probs, values).view(batch, q_heads, dim)


def paged_decode_attention(q: torch.Tensor, pool: PoolKV, scale: float) -> torch.Tensor:
    """q [B, Hq, D] (CUDA) -> [B, Hq, D]: the Triton kernel over the pool, then the splits combined."""
    batch, q_heads, dim = q.shape
    keys, values = pool.keys, pool.values
    kv_heads, tokens = keys.shape[1], keys.shape[2]
    group = q_heads // kv_heads
    split_len = triton.cdiv(triton.cdiv(tokens, SPLITS), BLOCK_N) * BLOCK_N
    partial = torch.empty(batch, q_heads, SPLITS, dim, dtype=torch.float32, device=q.device)
    stats = torch.empty(batch, q_heads, SPLITS, 2, dtype=torch.float32, device=q.device)  # (max, sum)
    _split_kernel[(batch, kv_heads, SPLITS)](
        q,
        keys,
        values,
        pool.slots,
        pool.lengths,
        partial,
        stats,
        scale,
        q.stride(0),
        q.stride(1),
        keys.stride(0),
        keys.stride(1),
        keys.stride(2),
        values.stride(0),
        values.stride(1),
        values.stride(2),
        split_len,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # float32 checks stay exact
        GROUP=group,
        BLOCK_G=max(16, triton.next_power_of_2(group)),
        BLOCK_N=BLOCK_N,
        D=dim,
    )
    top = stats[..., 0].amax(dim=-1, keepdim=True)  # [B, Hq, 1]
    weight = torch.exp(stats[..., 0] - top) * (stats[..., 0] > float("-inf"))  # empty splits weigh 0
    total = (weight * stats[..., 1]).sum(dim=-1, keepdim=True)
    out = (weight[..., None] * partial).sum(dim=2) / total
    return out.to(q.dtype)


if triton is not None:

    @triton.jit
    def _split_kernel(
        q_ptr,
        k_ptr,
        v_ptr,
        slots_ptr,
        lengths_ptr,
        partial_ptr,
        stats_ptr,
        scale,
        q_stride_b,
        q_stride_h,
        k_stride_s,
        k_stride_h,
        k_stride_t,
        v_stride_s,
        v_stride_h,
        v_stride_t,
        split_len,
        PRECISION: tl.constexpr,
        GROUP: tl.constexpr,
        BLOCK_G: tl.constexpr,
        BLOCK_N: tl.constexpr,
        D: tl.constexpr,
    ):
        row = tl.program_id(0)
        kv_head = tl.program_id(1)
        split = tl.program_id(2)
        slot = tl.load(slots_ptr + row)
        length = tl.load(lengths_ptr + row)
        heads = kv_head * GROUP + tl.arange(0, BLOCK_G)  # the query heads sharing this key head
        head_ok = tl.arange(0, BLOCK_G) < GROUP
        dims = tl.arange(0, D)
        q = tl.load(
            q_ptr + row * q_stride_b + heads[:, None] * q_stride_h + dims[None, :],
            mask=head_ok[:, None],
            other=0.0,
        )
        start = split * split_len
        end = tl.minimum(start + split_len, length)
        m = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
        s = tl.zeros([BLOCK_G], dtype=tl.float32)
        acc = tl.zeros([BLOCK_G, D], dtype=tl.float32)
        k_base = k_ptr + slot * k_stride_s + kv_head * k_stride_h
        v_base = v_ptr + slot * v_stride_s + kv_head * v_stride_h
        for n0 in range(start, end, BLOCK_N):
            offs = n0 + tl.arange(0, BLOCK_N)
            live = offs < end
            k = tl.load(k_base + offs[:, None] * k_stride_t + dims[None, :], mask=live[:, None], other=0.0)
            scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale  # [BLOCK_G, BLOCK_N], float32
            scores = tl.where(live[None, :], scores, float("-inf"))
            m_new = tl.maximum(m, tl.max(scores, axis=1))
            alpha = tl.exp(m - m_new)
            p = tl.exp(scores - m_new[:, None])
            s = s * alpha + tl.sum(p, axis=1)
            v = tl.load(v_base + offs[:, None] * v_stride_t + dims[None, :], mask=live[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m = m_new
        out_rows = (row * tl.num_programs(1) * GROUP + heads) * tl.num_programs(2) + split  # [B, Hq, SPLITS]
        tl.store(partial_ptr + out_rows[:, None] * D + dims[None, :], acc, mask=head_ok[:, None])
        tl.store(stats_ptr + out_rows * 2, m, mask=head_ok)
        tl.store(stats_ptr + out_rows * 2 + 1, s, mask=head_ok)
