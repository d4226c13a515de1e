"""The vision fast path (precomputed indices, batched window attention) equals the stock tower."""

from __future__ import annotations

import pytest
import torch

from conftest import random_frames
from core.attention import CAUSAL_PREFILL, VARLEN_VISION
from core.config import StreamConfig
from core.frames import video_input
from reference import stock_attention

STREAM = StreamConfig(min_pixels=4 * 28 * 28, max_pixels=200 * 28 * 28)


@pytest.mark.parametrize(
    "height,width,frames",
    [
        (224, 224, 2),  # 2x2 windows of equal size: one batched call per layer
        (224, 336, 2),
        (196, 280, 2),  # 7x10 merged tokens: windows cut by the frame edge
        (224, 224, 4),  # two temporal groups
        (56, 84, 2),  # smaller than one window
    ],
)
def test_fast_vision_equals_stock_vision(tiny_model, rng, height, width, frames):
    video = video_input(random_frames(rng, height, width, frames), STREAM, tiny_model.vision)
    ours = tiny_model.encode_video(video.pixel_values, video.grid_thw)
    with stock_attention(tiny_model.model):
        out = tiny_model.model.model.get_video_features(
            pixel_values_videos=video.pixel_values, video_grid_thw=video.grid_thw
        )
    stock = torch.cat(list(out.pooler_output))
    assert ours.shape == (video.num_tokens, tiny_model.text.hidden_size)
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5)


def test_the_engine_uses_the_batched_attention(tiny_model):
    assert tiny_model.model.config.vision_config._attn_implementation == VARLEN_VISION
    assert tiny_model.model.config.text_config._attn_implementation == CAUSAL_PREFILL


def test_padding_the_mlp_width_changes_no_output(tiny_dir, rng):
    """The vision MLP is padded with zero units on a GPU (cuBLAS alignment); the tower's output stays."""
    from core.loading import load_model
    from core.model import align_mlp_width

    model = load_model(tiny_dir, device="cpu", dtype="float32")  # its own copy: the padding is in place
    video = video_input(random_frames(rng, 224, 336), STREAM, model.vision)
    before = model.encode_video(video.pixel_values, video.grid_thw)
    mlp = model.model.model.visual.blocks[0].mlp
    width = mlp.gate_proj.out_features
    for block in model.model.model.visual.blocks:
        align_mlp_width(block.mlp, 48)
    assert mlp.gate_proj.weight.shape[0] == mlp.down_proj.weight.shape[1] == 96 != width
    after = model.encode_video(video.pixel_values, video.grid_thw)
    torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-6)
    align_mlp_width(mlp, 48)  # already aligned: nothing changes
    assert mlp.gate_proj.weight.shape[0] == 96
