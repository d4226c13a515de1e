"""Frames to the vision tower's input: resize, normalise and patchify, on the model's device.

The arithmetic is the stock Qwen2-VL video processor's (torchvision bicubic resize with
antialias on uint8, CLIP mean/std normalisation in float32, the same patch order), so the output
equals `Qwen2VLVideoProcessor` on the same frames; a test checks it. The target size comes from
qwen-vl-utils' `smart_resize` (sides multiples of 28, area within [min_pixels, max_pixels]).
Frames of one chunk that differ in size (a resolution change mid-chunk) are each resized to the
size of the chunk's first frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.v2.functional as tvF
from qwen_vl_utils import smart_resize

from core.config import StreamConfig
from core.errors import SourceError
from core.spec import VisionSpec


@dataclass(frozen=True)
class VideoInput:
    """One chunk ready for the vision tower."""

    pixel_values: torch.Tensor  # [grid_t * grid_h * grid_w, 3 * temporal_patch * patch * patch], float32
    grid_thw: (
        torch.Tensor
    )  # [1, 3] patch grid (temporal groups, patch rows, patch columns), int64, on the host
    merged_grid: tuple[int, int, int]  # the LLM token grid: (grid_t, grid_h / merge, grid_w / merge)
    size: tuple[int, int]  # resized (height, width) in pixels

    @property
    def num_tokens(self) -> int:
        t, h, w = self.merged_grid
        return t * h * w


def target_size(height: int, width: int, stream: StreamConfig, vision: VisionSpec) -> tuple[int, int]:
    """(height, width) a frame is resized to: aspect kept, sides multiples of 28, bounded area."""
    try:
        h, w = smart_resize(
            height, width, vision.factor, min_pixels=stream.min_pixels, max_pixels=stream.max_pixels
        )
    except (ValueError, AssertionError) as exc:
        raise SourceError(
            f"a {width}x{height} frame cannot be used ({exc}); use a less extreme aspect ratio"
        ) from None
    # qwen-vl-utils floors the short side of a wide frame to 0 when max_pixels is small; the stock
    # processor (transformers' smart_resize) keeps one patch there, and so do we.
    return max(vision.factor, h), max(vision.factor, w)


def video_input(
    frames: Sequence[np.ndarray], stream: StreamConfig, vision: VisionSpec, device: torch.device | str = "cpu"
) -> VideoInput:
    """Resize, normalise and patchify the frames of one chunk (uint8 RGB [H, W, 3] each)."""
    if len(frames) == 0:
        raise ValueError("a chunk needs at least one frame")
    for frame in frames:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise SourceError(
                f"frames must be uint8 RGB arrays of shape [height, width, 3] (got {frame.dtype} {frame.shape})"
            )
    height, width = target_size(frames[0].shape[0], frames[0].shape[1], stream, vision)
    if all(f.shape == frames[0].shape for f in frames):
        video = torch.from_numpy(np.stack(frames)).to(device).permute(0, 3, 1, 2)  # [T, 3, H, W] uint8
        video = _resize(video, height, width)
    else:
        video = torch.cat(
            [_resize(torch.from_numpy(f).to(device).permute(2, 0, 1)[None], height, width) for f in frames]
        )
    mean = torch.tensor(vision.image_mean, device=video.device) * 255.0
    std = torch.tensor(vision.image_std, device=video.device) * 255.0
    video = tvF.normalize(video.to(torch.float32), mean.tolist(), std.tolist())
    patches, grid = _patchify(video, vision)
    m = vision.merge_size
    return VideoInput(
        pixel_values=patches,
        grid_thw=torch.tensor([grid], dtype=torch.int64),  # metadata: kept on the host, read without a sync
        merged_grid=(grid[0], grid[1] // m, grid[2] // m),
        size=(height, width),
    )


def _resize(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if tuple(video.shape[-2:]) == (height, width):
        return video
    return tvF.resize(video, [height, width], interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)


def _patchify(video: torch.Tensor, vision: VisionSpec) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """[T, C, H, W] -> [patches, C * tp * p * p] in the processor's order (merge groups contiguous)."""
    tp, p, m = vision.temporal_patch_size, vision.patch_size, vision.merge_size
    if pad := -video.shape[0] % tp:  # repeat the last frame to fill the last temporal group
        video = torch.cat([video, video[-1:].expand(pad, -1, -1, -1)])
    frames, channels, height, width = video.shape
    gt, gh, gw = frames // tp, height // p, width // p
    patches = video.reshape(gt, tp, channels, gh // m, m, p, gw // m, m, p)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return patches.reshape(gt * gh * gw, channels * tp * p * p), (gt, gh, gw)
