"""Frames to vision input: equal to the stock Qwen2-VL video processor, sized as qwen-vl-utils sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as tvF
from qwen_vl_utils import smart_resize

from conftest import SMALL_STREAM, random_frames
from core.config import StreamConfig
from core.errors import SourceError
from core.frames import target_size, video_input

DEFAULT = StreamConfig()


def stock_video_input(model, frames: list[np.ndarray], stream: StreamConfig):
    """The stock processor on one video, sized by the stream's pixel bounds."""
    return model.processor.video_processor(
        videos=[np.stack(frames)],
        return_tensors="pt",
        cap_pixels_per_frame=False,
        do_sample_frames=False,
        size={"shortest_edge": stream.min_pixels, "longest_edge": stream.max_pixels},
    )


@pytest.mark.parametrize(
    "stream, width, height, n, size, merged_grid",
    [
        (DEFAULT, 1280, 720, 2, (560, 1008), (1, 20, 36)),  # 720 tokens per chunk, as published
        (DEFAULT, 1920, 1080, 2, (560, 1008), (1, 20, 36)),
        (DEFAULT, 320, 240, 2, (252, 336), (1, 9, 12)),
        (DEFAULT, 50, 100, 3, (420, 224), (2, 15, 8)),  # portrait, odd count: padded to two groups
        (DEFAULT, 56, 56, 2, (280, 280), (1, 10, 10)),  # scaled up to min_pixels
        (SMALL_STREAM, 1280, 720, 2, (84, 140), (1, 3, 5)),
        (SMALL_STREAM, 1920, 1080, 2, (84, 140), (1, 3, 5)),
        (SMALL_STREAM, 320, 240, 2, (84, 112), (1, 3, 4)),
        (SMALL_STREAM, 50, 100, 3, (112, 56), (2, 4, 2)),
        (SMALL_STREAM, 56, 56, 2, (56, 56), (1, 2, 2)),
    ],
)
def test_equals_the_stock_video_processor(tiny_model, rng, stream, width, height, n, size, merged_grid):
    frames = random_frames(rng, height, width, n)
    ours = video_input(frames, stream, tiny_model.vision)
    stock = stock_video_input(tiny_model, frames, stream)

    assert ours.size == size
    assert ours.merged_grid == merged_grid
    assert ours.num_tokens == merged_grid[0] * merged_grid[1] * merged_grid[2]
    assert ours.grid_thw.dtype == torch.int64
    assert torch.equal(ours.grid_thw, stock["video_grid_thw"])
    assert ours.pixel_values.dtype == torch.float32
    assert torch.equal(ours.pixel_values, stock["pixel_values_videos"])


@pytest.mark.parametrize(
    "height, width, stream",
    [
        (720, 1280, DEFAULT),
        (1080, 1920, DEFAULT),
        (100, 50, DEFAULT),
        (3000, 4000, DEFAULT),
        (720, 1280, SMALL_STREAM),
        (10, 1900, SMALL_STREAM),  # aspect 190: extreme but allowed
    ],
)
def test_target_size_is_qwen_vl_utils_smart_resize(tiny_model, height, width, stream):
    expected = smart_resize(height, width, 28, min_pixels=stream.min_pixels, max_pixels=stream.max_pixels)
    # where qwen-vl-utils floors a side to 0 (10x1900 under SMALL_STREAM), one patch, as the stock processor
    expected = tuple(max(28, side) for side in expected)
    assert target_size(height, width, stream, tiny_model.vision) == expected


def test_720p_target_is_1008x560(tiny_model):
    assert smart_resize(720, 1280, 28, max_pixels=768 * 28 * 28) == (560, 1008)
    assert target_size(720, 1280, DEFAULT, tiny_model.vision) == (560, 1008)


@pytest.mark.parametrize(
    "first, second", [((720, 1280), (360, 640)), ((100, 50), (224, 224)), ((56, 56), (480, 64))]
)
def test_mixed_sizes_in_a_chunk_take_the_first_frames_target(tiny_model, rng, first, second):
    frames = [random_frames(rng, *first, n=1)[0], random_frames(rng, *second, n=1)[0]]
    height, width = target_size(*first, SMALL_STREAM, tiny_model.vision)
    resized = [
        tvF.resize(
            torch.from_numpy(f).permute(2, 0, 1),
            [height, width],
            tvF.InterpolationMode.BICUBIC,
            antialias=True,
        )
        .permute(1, 2, 0)
        .numpy()
        for f in frames
    ]
    # The stock processor on frames already at the target size leaves their size as is.
    stock = stock_video_input(tiny_model, resized, SMALL_STREAM)
    ours = video_input(frames, SMALL_STREAM, tiny_model.vision)
    assert ours.size == (height, width)
    assert torch.equal(ours.grid_thw, stock["video_grid_thw"])
    assert torch.equal(ours.pixel_values, stock["pixel_values_videos"])


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((56, 56, 3), np.float32),
        np.zeros((56, 56, 3), np.int16),
        np.zeros((56, 56), np.uint8),  # grey
        np.zeros((56, 56, 4), np.uint8),  # RGBA
        np.zeros((1, 56, 56, 3), np.uint8),  # a batch
        np.zeros((3, 56, 56), np.uint8),  # channels first
    ],
    ids=["float32", "int16", "grey", "rgba", "batched", "chw"],
)
@pytest.mark.parametrize("position", [0, 1])
def test_frames_that_are_not_uint8_rgb_raise(tiny_model, bad, position):
    frames = [np.zeros((56, 56, 3), np.uint8)] * 2
    frames[position] = bad
    with pytest.raises(SourceError, match=r"uint8 RGB"):
        video_input(frames, SMALL_STREAM, tiny_model.vision)


@pytest.mark.parametrize("height, width", [(1, 500), (500, 1), (2, 1000)])
def test_absurd_aspect_ratio_raises_a_readable_error(tiny_model, height, width):
    frames = [np.zeros((height, width, 3), np.uint8)] * 2
    with pytest.raises(SourceError) as info:
        video_input(frames, DEFAULT, tiny_model.vision)
    message = str(info.value)
    assert f"{width}x{height}" in message and "aspect ratio" in message
    assert "\n" not in message
