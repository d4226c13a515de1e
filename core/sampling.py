"""Choosing the next token from logits: penalties, suppression, temperature, top-k/top-p, a seeded draw.

Everything stays on the device and nothing waits for it, so the caller can queue the next decode
step behind the draw before reading the token back (core/engine.py).
"""

from __future__ import annotations

import torch

from core.config import GenerationConfig


class TokenSampler:
    """Samples one token id per call as `GenerationConfig` says, from a seeded generator."""

    def __init__(
        self,
        config: GenerationConfig,
        *,
        valid_vocab: int,
        stop_ids: list[int],
        suppress_ids: list[int] = (),
        device: torch.device,
    ) -> None:
        self.config = config
        self.valid_vocab = valid_vocab  # rows past the tokenizer's vocabulary are padding, never sampled
        self.stop_ids = torch.tensor(stop_ids, dtype=torch.long, device=device)
        self.suppress_ids = torch.tensor(sorted(set(suppress_ids)), dtype=torch.long, device=device)
        self._banned: torch.Tensor | None = None  # [vocab] bool, built on the first call (vocab size known)
        self.generator = torch.Generator(device=device)
        seed = config.seed if config.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        self.generator.manual_seed(seed)

    def __call__(self, logits: torch.Tensor, recent: torch.Tensor, step: int) -> torch.Tensor:
        """logits [vocab] float32, recent token ids [k] for the repetition penalty, step = tokens so far."""
        cfg = self.config
        logits = logits.clone()
        if self._banned is None or self._banned.numel() != logits.numel():
            banned = torch.zeros(logits.numel(), dtype=torch.bool, device=logits.device)
            banned[self.valid_vocab :] = True
            banned[self.suppress_ids] = True
            self._banned = banned
        logits.masked_fill_(self._banned, -torch.inf)
        if cfg.repetition_penalty != 1.0 and recent.numel():
            scores = logits.gather(0, recent)
            scores = torch.where(scores < 0, scores * cfg.repetition_penalty, scores / cfg.repetition_penalty)
            logits.scatter_(0, recent, scores)
        if step < cfg.min_new_tokens:
            # not `logits[ids] = -inf`: that copies a host scalar to the device and waits for it
            logits.index_fill_(0, self.stop_ids, -torch.inf)
        if cfg.greedy:
            return logits.argmax()
        logits = logits / cfg.temperature
        if cfg.top_k:
            kth = torch.topk(logits, min(cfg.top_k, logits.numel())).values[-1]
            logits = logits.masked_fill(logits < kth, -torch.inf)
        if cfg.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            # keep the smallest prefix whose mass reaches top_p (transformers' TopPLogitsWarper rule)
            drop = cumulative - sorted_logits.softmax(-1) >= cfg.top_p
            logits = logits.scatter(0, order, sorted_logits.masked_fill(drop, -torch.inf))
        probs = logits.softmax(-1)
        # What torch.multinomial does for one draw (the exponential race: argmax p / q, q ~ Exp(1), same
        # generator use, same draws), without its input checks, which wait for the GPU twice a token.
        race = torch.empty_like(probs).exponential_(1.0, generator=self.generator)
        return (probs / race).argmax()
