"""What streamvlm knows about a Qwen2.5-VL checkpoint without its weights.

`ModelSpec` holds the tokenizer, the structural token ids, how frames become vision tokens and the
shape of the KV cache. The conversation layout, frame sizing, the trainer's data side and offline
QA need only this; `core.model.StreamModel` adds the weights. `ModelSpec.from_config` reads it from
a transformers config (and processor), so a spec costs no memory and no device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from core.errors import ModelNotFoundError

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# Qwen2's special tokens (the tiny tokenizer's ids differ from Qwen's; they are always read from it).
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# The SpecialTokens field -> the token it names.
SPECIAL_NAMES = {
    "im_start": "<|im_start|>",
    "im_end": "<|im_end|>",
    "vision_start": "<|vision_start|>",
    "vision_end": "<|vision_end|>",
    "video_pad": "<|video_pad|>",
    "endoftext": "<|endoftext|>",
}

# CLIP's normalisation, which Qwen2.5-VL processors use; read from the processor when it has one.
_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the structural tokens, read from the tokenizer (never hard-coded)."""

    im_start: int
    im_end: int
    vision_start: int
    vision_end: int
    video_pad: int
    endoftext: int

    @property
    def stops(self) -> frozenset[int]:
        """Tokens that end a reply: the end of turn, and the end of text some checkpoints emit instead."""
        return frozenset((self.im_end, self.endoftext))


@dataclass(frozen=True)
class VisionSpec:
    """How frames become vision tokens, read from the checkpoint's config and processor."""

    patch_size: int  # 14
    temporal_patch_size: int  # 2 frames per temporal group
    merge_size: int  # 2x2 patches per LLM token
    tokens_per_second: float  # temporal position units per second of video
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]

    @property
    def factor(self) -> int:
        """Frame sides must be multiples of this many pixels."""
        return self.patch_size * self.merge_size


@dataclass(frozen=True)
class TextSpec:
    """Shapes of the language model's KV cache and its rotary frequencies."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    rope_theta: float
    mrope_section: tuple[int, ...]

    def kv_bytes_per_token(self, dtype: torch.dtype) -> int:
        return (
            self.num_layers
            * 2
            * self.num_kv_heads
            * self.head_dim
            * torch.empty((), dtype=dtype).element_size()
        )


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """A checkpoint seen without weights: tokenizer, special ids, vision and cache shapes."""

    name: str
    tokenizer: Any
    special: SpecialTokens
    vision: VisionSpec
    text: TextSpec

    @classmethod
    def from_config(cls, config: Any, tokenizer: Any, name: str, processor: Any | None = None) -> ModelSpec:
        """Read the spec from a Qwen2.5-VL config and its tokenizer; refuse a checkpoint of another kind."""
        text, vision = config.text_config, config.vision_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        rope = getattr(text, "rope_parameters", None) or getattr(text, "rope_scaling", None) or {}
        text_spec = TextSpec(
            num_layers=text.num_hidden_layers,
            num_kv_heads=text.num_key_value_heads,
            head_dim=head_dim,
            hidden_size=text.hidden_size,
            vocab_size=text.vocab_size,
            rope_theta=float(rope.get("rope_theta", getattr(text, "rope_theta", 1e6))),
            mrope_section=tuple(rope.get("mrope_section", (16, 24, 24))),
        )
        video_processor = getattr(processor, "video_processor", None)
        vision_spec = VisionSpec(
            patch_size=vision.patch_size,
            temporal_patch_size=vision.temporal_patch_size,
            merge_size=vision.spatial_merge_size,
            tokens_per_second=float(vision.tokens_per_second),
            image_mean=tuple(getattr(video_processor, "image_mean", None) or _IMAGE_MEAN),
            image_std=tuple(getattr(video_processor, "image_std", None) or _IMAGE_STD),
        )
        ids = {field: tokenizer.convert_tokens_to_ids(token) for field, token in SPECIAL_NAMES.items()}
        missing = [
            token for field, token in SPECIAL_NAMES.items() if ids[field] in (None, tokenizer.unk_token_id)
        ]
        if missing:
            raise ModelNotFoundError(
                f"the tokenizer of '{name}' lacks Qwen's special tokens {', '.join(missing)}; "
                "pass a Qwen2.5-VL checkpoint"
            )
        special = SpecialTokens(**ids)
        if special.video_pad != config.video_token_id:
            raise ModelNotFoundError(
                f"'{name}' is inconsistent: the tokenizer's <|video_pad|> is {special.video_pad} "
                f"but the config's video_token_id is {config.video_token_id}"
            )
        return cls(name=name, tokenizer=tokenizer, special=special, vision=vision_spec, text=text_spec)

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text (no special-token parsing surprises: specials are written explicitly).

        Text that spells a special token ("<|im_end|>" in a client's question) is tokenized as the
        characters it is (`split_special_tokens`), never as the special id, so no text can close a turn,
        open another role's or add vision pads. Every call sets the tokenizer's flag the same way, so
        sessions encoding on several threads agree."""
        return self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)

    def encode_template(self, text: str) -> list[int]:
        """Token ids of a template of our own that spells special tokens ("<|im_start|>system\n..."),
        parsed as the special ids they name. Never for text from a user or a client (`encode`)."""
        return self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
