"""Contiguous 3-D (mRoPE) positions and the delta rotation of cached keys.

Qwen2.5-VL gives every token a (temporal, height, width) position. A text token at cursor c sits
at (c, c, c) and advances the cursor by 1. A video block of merged grid (T, H, W) starting at c
puts token (g, r, s) at (c + g*dt, c + r, c + s), where dt = tokens_per_second * seconds per
temporal group (2 at 2 FPS, 0.5 at 8 FPS, so positions are floats), and advances the cursor by
max((T-1)*dt, H-1, W-1) + 1.

After an eviction the kept tokens are renumbered as if they were a fresh prompt. Each kept run
then shifts by one scalar delta on all three axes, and a rotary angle is position times a
channel frequency whatever the axis, so rotating a cached (already rotated) key by delta*w_j on
every channel j equals recomputing it at its new position. That is the only rotation work after
a key is first written: once per eviction, on the runs that moved.

(Stock transformers 5.x truncates temporal positions to integers and advances a video block by
max(H, W) only; for one temporal group per chunk, the 2 FPS layout, both rules give the same
numbers, which the equivalence tests check.)
"""

from __future__ import annotations

import torch


def temporal_step(tokens_per_second: float, temporal_patch_size: int, fps: float) -> float:
    """dt: temporal position units between consecutive temporal groups of a video block."""
    return tokens_per_second * temporal_patch_size / fps


def text_positions(start: float, n: int, device: torch.device | None = None) -> torch.Tensor:
    """Positions [3, n] of n text tokens starting at cursor `start`."""
    return (torch.arange(n, device=device, dtype=torch.float32) + start).expand(3, n)


def vision_positions(start: float, grid: tuple[int, int, int], dt: float, device=None) -> torch.Tensor:
    """Positions [3, T*H*W] of a merged video grid (T, H, W) starting at cursor `start`, raster order."""
    t, h, w = grid
    gt = torch.arange(t, device=device, dtype=torch.float32) * dt
    gh = torch.arange(h, device=device, dtype=torch.float32)
    gw = torch.arange(w, device=device, dtype=torch.float32)
    tt, hh, ww = torch.meshgrid(gt, gh, gw, indexing="ij")
    return torch.stack([tt, hh, ww]).reshape(3, -1) + start


def vision_extent(grid: tuple[int, int, int], dt: float) -> float:
    """How far a video block advances the cursor."""
    t, h, w = grid
    return max((t - 1) * dt, h - 1, w - 1) + 1


def piece_positions(
    cursor: float,
    length: int,
    grid: tuple[int, int, int] | None = None,
    dt: float = 0.0,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, float]:
    """Positions [3, length] of one piece of the conversation starting at `cursor`, and its extent.

    The one place the layout's arithmetic lives (the cache, the trainer's samples and offline QA use
    it). A text piece sits at (c, c, c) onwards; a vision piece (`grid` given) is <|vision_start|> at
    c, the merged grid from c + 1, and <|vision_end|> right after the grid's extent.
    """
    if grid is None:
        return text_positions(cursor, length, device), float(length)
    t, h, w = grid
    if length != t * h * w + 2:
        raise ValueError(f"a vision piece on grid {grid} has {t * h * w + 2} tokens, not {length}")
    inner = vision_extent(grid, dt)
    positions = torch.cat(
        [
            text_positions(cursor, 1, device),
            vision_positions(cursor + 1, grid, dt, device),
            text_positions(cursor + 1 + inner, 1, device),
        ],
        dim=1,
    )
    return positions, inner + 2


def rotation(delta: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [n, head_dim] (float64) that shift keys by `delta` [n] positions on every mRoPE axis."""
    angles = delta.to(torch.float64)[:, None] * inv_freq.to(torch.float64)[None, :]  # [n, head_dim/2]
    angles = torch.cat((angles, angles), dim=-1)  # Qwen rotates channel j with j + head_dim/2
    return angles.cos(), angles.sin()


def rotate(keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Shift keys [..., n, head_dim] by a rotation computed in at least float32; same dtype out.

    Half-precision keys are rounded once per eviction that moves them, not once per token.
    """
    compute = torch.promote_types(keys.dtype, torch.float32)
    k = keys.to(compute)
    half = k.shape[-1] // 2
    rotated_half = torch.cat((-k[..., half:], k[..., :half]), dim=-1)
    return (k * cos.to(compute) + rotated_half * sin.to(compute)).to(keys.dtype)
