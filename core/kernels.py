"""Triton kernels for the GPU fast path, each with the plain PyTorch function it must equal.

- `rotate_into`: the eviction's delta rotation (core/positions.py `rotate`) fused into one pass
  that reads gathered keys once and writes the rotated keys straight into the cache buffers.
  The PyTorch version makes about ten float32 passes over the keys, which cost ~8 ms per chunk
  on an H100 for 0.4 GB of keys; the kernel reads and writes each element once.

Triton comes with PyTorch's CUDA builds. Where it is missing, or the tensors are not on a CUDA
device, each function falls back to the PyTorch version, so callers never check.
"""

from __future__ import annotations

import torch

from core.positions import rotate

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only PyTorch builds
    triton = None


def rotate_into(
    dst: torch.Tensor, src: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, fused: bool = True
) -> None:
    """dst[..., n, D] = rotate(src[..., n, D], cos, sin) with cos/sin [n, D] as `rotation` returns them;
    `fused=False` (the engine's acceleration decision) always takes the PyTorch path."""
    if fused and triton is not None and dst.is_cuda and dst.shape == src.shape:
        rotate_into_triton(dst, src, cos, sin)
    else:
        dst.copy_(rotate(src, cos, sin))


def rotate_into_triton(dst: torch.Tensor, src: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """The fused kernel. Leading dims of `dst` may be strided (a slice of the cache buffers); `src`
    must be contiguous. Math in float32, as `rotate` does for half-precision keys."""
    n, dim = src.shape[-2], src.shape[-1]
    if n == 0:
        return
    half = dim // 2
    src = src.contiguous().view(-1, n, dim)
    try:
        out = dst.view(-1, n, dim)  # a slice of the cache buffers: leading dims merge into one stride
    except RuntimeError:
        raise ValueError("rotate_into needs a destination whose leading dims merge into one") from None
    if out.stride(-1) != 1 or out.stride(-2) != dim:
        raise ValueError("rotate_into needs the destination's last two dims dense")
    cos_half = cos[:, :half].to(torch.float32).contiguous()
    sin_half = sin[:, :half].to(torch.float32).contiguous()
    block_n = 32
    grid = (src.shape[0], triton.cdiv(n, block_n))
    _rotate_kernel[grid](
        src,
        out,
        cos_half,
        sin_half,
        n,
        src.stride(0),
        out.stride(0),
        HALF=half,
        BLOCK_D=triton.next_power_of_2(half),
        BLOCK_N=block_n,
    )


def warm_up(head_dim: int, dtype: torch.dtype, device: torch.device) -> None:
    """Compile the kernels now (a fraction of a second, once per process) rather than at the first
    eviction of a stream, where an H100 run measured a 0.35 s stall. Token counts that are and are
    not multiples of 16 are compiled separately by Triton, so both are run."""
    if triton is None or device.type != "cuda":
        return
    for n in (16, 17):
        keys = torch.zeros(1, 1, n, head_dim, dtype=dtype, device=device)
        cos = torch.ones(n, head_dim, dtype=torch.float64, device=device)
        rotate_into_triton(torch.empty_like(keys), keys, cos, torch.zeros_like(cos))


if triton is not None:

    @triton.jit
    def _rotate_kernel(
        src,
        dst,
        cos,
        sin,
        n,
        src_row,
        dst_row,
        HALF: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        # One program: BLOCK_N tokens of one (layer, head) row; channel j pairs with j + HALF.
        row = tl.program_id(0)
        token = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)[:, None]
        channel = tl.arange(0, BLOCK_D)[None, :]
        mask = (token < n) & (channel < HALF)
        source = src + row * src_row + token * (2 * HALF) + channel
        low = tl.load(source, mask=mask).to(tl.float32)
        high = tl.load(source + HALF, mask=mask).to(tl.float32)
        c = tl.load(cos + token * HALF + channel, mask=mask)
        s = tl.load(sin + token * HALF + channel, mask=mask)
        target = dst + row * dst_row + token * (2 * HALF) + channel
        tl.store(target, (low * c - high * s).to(dst.dtype.element_ty), mask=mask)
        tl.store(target + HALF, (high * c + low * s).to(dst.dtype.element_ty), mask=mask)
