"""Chunked cross-entropy: the LM head and the loss over labelled positions, a chunk at a time.

A 19k-token sample with Qwen's 152,064-word vocabulary would need 11 GB of float32 logits (and as
much again for their gradient) if the head ran over every position. Only the reply text carries
labels, so the head runs over the labelled positions alone, `chunk` rows at a time, each chunk
under activation checkpointing: its logits exist during its own forward and are recomputed in
backward, so at most one chunk of logits is alive at any moment.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from trainer.data.sample import IGNORE_INDEX


def shift_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """labels [L] aligned with input_ids -> (positions [N] whose next token is labelled, targets [N]).

    Position i predicts token i + 1 (transformers' convention: the loss shifts the labels).
    """
    following = labels[1:]
    positions = (following != IGNORE_INDEX).nonzero().squeeze(1)
    return positions, following[positions]


def _chunk_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight)  # [chunk, vocab]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 logits -> float32
    return F.cross_entropy(logits, targets, reduction="sum")


def chunked_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 1024
) -> torch.Tensor:
    """Summed cross-entropy of `F.linear(hidden, weight)` against targets, in float32.

    hidden [N, hidden_size] (labelled positions only), weight [vocab, hidden_size] (the LM head),
    targets [N]. Returns a scalar sum in float32 or wider (the caller divides by the global label count).
    """
    if targets.numel() == 0:
        return hidden.sum() * 0.0  # keeps the graph (and FSDP's backward hooks) connected
    total = hidden.new_zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32))
    for start in range(0, targets.numel(), chunk):
        end = start + chunk
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            part = checkpoint(_chunk_loss, hidden[start:end], weight, targets[start:end], use_reentrant=False)
        else:
            part = _chunk_loss(hidden[start:end], weight, targets[start:end])
        total = total + part
    return total
