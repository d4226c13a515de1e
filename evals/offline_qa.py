"""Offline video QA: one forward over a whole clip and a question, the answer read from one token.

The question benchmarks (OVO-Bench, Video-MME, MVBench, LongVideoBench) ask about a clip seen at
once, in Qwen's plain chat layout (not the streaming one; `Conversation.offline_question` builds it):

    <|im_start|>system\\n{system}<|im_end|>\\n
    <|im_start|>user\\n<|vision_start|>{video pads}<|vision_end|>{question}<|im_end|>\\n
    <|im_start|>assistant\\n{answer prefix, e.g. "The answer is:"}

The answer is the argmax of the last position's logits over a fixed set of answer tokens (for
OVO-Bench the 17 tokens No, Yes, 0-9, A-E): one forward, no sampling, so a model can only
answer in the benchmark's vocabulary. Each answer text is scored by its first token; a tokenizer
that gives two answers the same first token cannot be used and is refused.

Frames follow qwen-vl-utils' video budget: each frame's area is capped so the whole clip stays
within `total_pixels` (at most `max_pixels`, at least `min_pixels` per frame), and the temporal
position step follows the clip's actual sampling rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from core.config import PATCH_FACTOR, StreamConfig
from core.conversation import Conversation, Part, layout_positions
from core.errors import ConfigError
from core.frames import video_input
from core.model import StreamModel
from core.positions import temporal_step
from core.spec import DEFAULT_SYSTEM_PROMPT

OVO_ANSWERS = ("No", "Yes", *"0123456789", *"ABCDE")
OVO_PREFIX = "The answer is:"
_TOKEN_AREA = PATCH_FACTOR * PATCH_FACTOR


@dataclass(frozen=True)
class FrameBudget:
    """How many pixels a clip's frames may take (qwen-vl-utils' defaults)."""

    min_pixels: int = 128 * _TOKEN_AREA
    max_pixels: int = 768 * _TOKEN_AREA
    total_pixels: int = int(128000 * _TOKEN_AREA * 0.9)

    @classmethod
    def capped(cls, max_pixels: int | None) -> FrameBudget:
        """The default budget, with frames no larger than `max_pixels` when given (small test clips)."""
        if not max_pixels:
            return cls()
        return cls(min_pixels=min(cls.min_pixels, max_pixels), max_pixels=max_pixels)

    def stream_config(self, frames: int) -> StreamConfig:
        """Per-frame area bounds for a clip of `frames` frames."""
        cap = max(min(self.max_pixels, self.total_pixels / max(1, frames) * 2), int(self.min_pixels * 1.05))
        cap = int(min(cap, self.max_pixels))
        return StreamConfig(min_pixels=min(self.min_pixels, cap), max_pixels=cap)


@dataclass(frozen=True)
class Answer:
    answer: str
    scores: dict[str, float]  # logit of each allowed answer
    vision_tokens: int


class OfflineQA:
    """Answers one question about one clip with a restricted single-token answer."""

    def __init__(
        self,
        model: StreamModel,
        budget: FrameBudget | None = None,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    ):
        self.model = model
        self.budget = budget or FrameBudget()
        self.system_prompt = system_prompt

    def answer_ids(self, answers: Sequence[str]) -> list[int]:
        ids = []
        for text in answers:
            encoded = self.model.encode(text)
            if not encoded:
                raise ConfigError(f"answer text {text!r} encodes to no token")
            ids.append(encoded[0])
        if len(set(ids)) != len(ids):
            clash = [a for a, i in zip(answers, ids, strict=True) if ids.count(i) > 1]
            raise ConfigError(f"answers {', '.join(clash)} start with the same token in this tokenizer")
        return ids

    @torch.inference_mode()
    def answer(
        self,
        frames: Sequence[np.ndarray],
        sample_fps: float,
        question: str,
        answers: Sequence[str] = OVO_ANSWERS,
        prefix: str = OVO_PREFIX,
    ) -> Answer:
        """The allowed answer with the highest logit after the prompt (and `prefix`)."""
        model = self.model
        device = model.device
        video = video_input(list(frames), self.budget.stream_config(len(frames)), model.vision, device)
        features = model.encode_video(video.pixel_values, video.grid_thw)  # [vision tokens, hidden]

        pieces = Conversation(model.spec, self.system_prompt).offline_question(
            video.num_tokens, question, prefix
        )
        dt = temporal_step(model.vision.tokens_per_second, model.vision.temporal_patch_size, sample_fps)
        positions = layout_positions(pieces, [video.merged_grid], dt, device)
        ids = [i for piece in pieces for i in piece.ids]
        embeds = model.embed(torch.tensor(ids, dtype=torch.long, device=device))
        vision_at = [p.part for p in pieces].index(Part.VISION)
        first = sum(len(p) for p in pieces[:vision_at]) + 1  # the video's tokens follow <|vision_start|>
        embeds[first : first + video.num_tokens] = features
        from transformers import DynamicCache

        logits = model.forward(embeds, positions, DynamicCache())  # [vocab], last position
        allowed = logits[torch.tensor(self.answer_ids(answers), device=device)]
        scores = {a: float(s) for a, s in zip(answers, allowed.tolist(), strict=True)}
        return Answer(answers[int(allowed.argmax())], scores, video.num_tokens)
