"""The stock transformers path the engine must equal: one forward over a whole laid-out sequence."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from core.frames import VideoInput
from core.model import StreamModel


@torch.inference_mode()
def stock_forward(model: StreamModel, ids: list[int], videos: list[VideoInput], fps: float):
    """Logits [len(ids), vocab] and the cache of `Qwen2_5_VLForConditionalGeneration` over `ids`.

    Positions come from the model's own `get_rope_index` (fresh and contiguous) and vision
    features from its own vision tower call on `pixel_values_videos`.
    """
    input_ids = torch.tensor([ids], dtype=torch.long)
    kwargs = {}
    if videos:
        kwargs = dict(
            pixel_values_videos=torch.cat([v.pixel_values for v in videos]),
            video_grid_thw=torch.cat([v.grid_thw for v in videos]),
            mm_token_type_ids=(input_ids == model.special.video_pad).int() * 2,
            second_per_grid_ts=torch.full((len(videos),), model.vision.temporal_patch_size / fps),
        )
    model.model.model.rope_deltas = None
    with stock_attention(model.model):
        out = model.model(input_ids=input_ids, use_cache=True, **kwargs)
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    return out.logits[0].float(), cache


@contextmanager
def stock_attention(hf_model):
    """Run the stock SDPA attention everywhere (the engine registers its own, core/attention.py)."""
    config = hf_model.config
    engine = {
        "text_config": config.text_config._attn_implementation,
        "vision_config": config.vision_config._attn_implementation,
    }
    hf_model.set_attn_implementation({"text_config": "sdpa", "vision_config": "sdpa"})
    try:
        yield
    finally:
        hf_model.set_attn_implementation(engine)
