"""One training sample, as the data side hands it to the training loop.

This is the interface between `trainer/data/` (reading, decoding, building) and the loop
(`trainer/train.py`); both sides depend on this file only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100  # label of a token the loss skips (transformers' convention)


@dataclass
class TrainSample:
    """A whole conversation window, batch size 1, no packing."""

    input_ids: torch.Tensor  # [L] int64, video pads included (one per vision token)
    labels: torch.Tensor  # [L] int64, IGNORE_INDEX except on reply text and its <|im_end|>
    position_ids: torch.Tensor  # [3, L] int64, contiguous mRoPE positions as the engine computes them
    pixel_values_videos: torch.Tensor  # [patches, 3 * temporal_patch * patch * patch] float32
    video_grid_thw: torch.Tensor  # [chunks, 3] int64, one row per one-second vision block
    source: str  # "path/to/file_with_seeks.jsonl:LINE" (1-based), for errors and logs

    def __len__(self) -> int:
        return int(self.input_ids.numel())

    @property
    def num_label_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())
