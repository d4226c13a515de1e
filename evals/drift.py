"""Numerical drift of 8-bit weights: the same inputs through the model as loaded and through each FP8
recipe (`python -m evals efficiency --drift`).

The inputs are what a chunk gives the language model: a system turn, one chunk of (synthetic) video
through the vision tower, a question and the assistant header, then `steps` tokens the unquantized
model picks greedily. Positions are a plain count on all three rotary axes: the comparison needs the
same inputs on both sides, not the engine's layout. Per recipe it reports:

- the relative error (Frobenius norm of the difference over the norm of the reference) of the logits
  and of the last hidden states (after the final norm), over every position, and its largest value
  for one position;
- greedy-token agreement: with the same prefix (teacher forcing), how often the quantized model's
  top token is the reference's, over the generated positions; and left to itself (free greedy
  decoding), how many of its first tokens equal the reference's before the first difference.

With random weights the errors measure the arithmetic (how far FP8 moves the numbers), not the
quality of a checkpoint's commentary: `python -m evals inf-stream ... --weights fp8` measures that.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads with the model (evals/registry.py says why)
    import numpy as np
    import torch

    from core.model import StreamModel

SYSTEM = "<|im_start|>system\nYou are a live commentator.<|im_end|>\n<|im_start|>user\n"
QUESTION = "What happens now?<|im_end|>\n<|im_start|>assistant\n"


@dataclass
class Outputs:
    hidden: torch.Tensor  # [n, hidden] float32: the language model's last hidden states
    logits: torch.Tensor  # [n, vocab] float32


def drift_inputs(model: StreamModel, frames: list[np.ndarray], stream) -> torch.Tensor:
    """Embeddings [n, hidden] of a system turn, one chunk of `frames` through the vision tower and a
    question with the assistant header: a chunk's prefill, laid out plainly."""
    import torch

    from core.frames import video_input

    video = video_input(frames, stream, model.vision, model.device)
    features = model.encode_video(video.pixel_values, video.grid_thw)
    ids = [model.spec.encode_template(t) for t in (SYSTEM, QUESTION)]  # they spell the chat's specials
    text = [model.embed(torch.tensor(i, device=model.device)) for i in ids]
    return torch.cat([text[0], features.to(text[0].dtype), text[1]])


def _positions(n: int, device: torch.device) -> torch.Tensor:
    import torch

    return torch.arange(n, device=device).expand(3, 1, n)


def forward(hf: torch.nn.Module, embeds: torch.Tensor) -> Outputs:
    """One forward of a Qwen2.5-VL's language model over `embeds` [n, hidden], no cache."""
    import torch

    with torch.inference_mode():
        out = hf.model.language_model(
            inputs_embeds=embeds[None], position_ids=_positions(len(embeds), embeds.device), use_cache=False
        )
        hidden = out.last_hidden_state[0]
        return Outputs(hidden=hidden.float(), logits=hf.lm_head(hidden).float())


def greedy(hf: torch.nn.Module, embeds: torch.Tensor, steps: int) -> list[int]:
    """`steps` tokens picked greedily after `embeds`, each a full forward (no cache: nothing but the
    weights differs between the two sides)."""
    import torch

    embedding = hf.model.get_input_embeddings()
    tokens: list[int] = []
    with torch.inference_mode():
        for _ in range(steps):
            token = int(forward(hf, embeds).logits[-1].argmax())
            tokens.append(token)
            embeds = torch.cat([embeds, embedding(torch.tensor([token], device=embeds.device))])
    return tokens


def _relative(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """(relative error over everything, the largest relative error of one row)."""
    diff = other - reference
    whole = float(diff.norm() / reference.norm())
    rows = float((diff.norm(dim=-1) / reference.norm(dim=-1).clamp_min(1e-30)).max())
    return whole, rows


def compare(reference: Outputs, other: Outputs, generated: slice) -> dict:
    """The drift of `other` from `reference` (same inputs); `generated`: the positions whose top token
    is a generated one."""
    logits, logits_row = _relative(reference.logits, other.logits)
    hidden, hidden_row = _relative(reference.hidden, other.hidden)
    top = reference.logits[generated].argmax(-1) == other.logits[generated].argmax(-1)
    return {
        "logits_rel_error": logits,
        "logits_rel_error_max_position": logits_row,
        "hidden_rel_error": hidden,
        "hidden_rel_error_max_position": hidden_row,
        "teacher_forced_top1_agreement": float(top.float().mean()),
    }


def drift_report(model: StreamModel, recipes: list[str], embeds: torch.Tensor, steps: int = 20) -> list[dict]:
    """Each of `recipes` (core/quantize.py names) against `model` as loaded, on the same inputs: a copy
    of the transformers model is quantized per recipe, so `model` itself is left as it was."""
    import torch

    from core.quantize import quantize_language_model, recipe_of

    hf = model.model
    reference_tokens = greedy(hf, embeds, steps)
    embedding = hf.model.get_input_embeddings()
    with torch.inference_mode():
        fed = torch.tensor(reference_tokens[:-1], device=embeds.device, dtype=torch.long)
        sequence = torch.cat([embeds, embedding(fed)])
    generated = slice(len(embeds) - 1, len(sequence))  # these positions predict the generated tokens
    reference = forward(hf, sequence)
    rows = []
    for name in recipes:
        quantized = copy.deepcopy(hf)
        layers = quantize_language_model(quantized, name)
        tokens = greedy(quantized, embeds, steps)
        same = next((i for i, (a, b) in enumerate(zip(tokens, reference_tokens)) if a != b), steps)
        rows.append(
            {
                "recipe": recipe_of(name).name,
                "quantized_linears": layers,
                **compare(reference, forward(quantized, sequence), generated),
                "greedy_tokens_before_first_difference": same,
                "greedy_positional_agreement": sum(a == b for a, b in zip(tokens, reference_tokens)) / steps,
                "steps": steps,
                "input_tokens": len(embeds),
            }
        )
        del quantized
        if embeds.device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def markdown(meta: dict, rows: list[dict], skipped: dict[str, str]) -> str:
    lines = [
        f"Drift of FP8 weights against {meta['dtype']} on {meta['device']}, model {meta['model']}: "
        f"{rows[0]['input_tokens'] if rows else '?'} input tokens (one {meta['resolution']} chunk), "
        f"{meta['steps']} greedy tokens. Relative errors are over every position (and the worst position).",
        "",
        "| recipe | linears | logits rel. error (worst position) | hidden rel. error (worst position) "
        "| top-1 agreement, same prefix | greedy tokens before first difference |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r['quantized_linears']} | {r['logits_rel_error']:.4f} "
            f"({r['logits_rel_error_max_position']:.4f}) | {r['hidden_rel_error']:.4f} "
            f"({r['hidden_rel_error_max_position']:.4f}) | {r['teacher_forced_top1_agreement']:.3f} | "
            f"{r['greedy_tokens_before_first_difference']} of {r['steps']} |"
        )
    for name, why in skipped.items():
        lines.append(f"| {name} | not run: {why} | | | | |")
    return "\n".join(lines) + "\n"


def run_drift(model: StreamModel, frames: list[np.ndarray], stream, meta: dict, out: Path, steps: int) -> str:
    """The drift report of every FP8 recipe that runs here (on a CPU, the ones torchao emulates), written
    to `out` as drift.json and drift.md; returns the table. A ConfigError when none can run."""
    from core.errors import ConfigError
    from core.quantize import RECIPES, missing

    skipped = {name: why for name in RECIPES if (why := missing(name, model.device, emulate=True))}
    recipes = [name for name in RECIPES if name not in skipped]
    if not recipes:
        raise ConfigError(next(iter(skipped.values())))
    rows = drift_report(model, recipes, drift_inputs(model, frames, stream), steps)
    meta = {**meta, "steps": steps}
    (out / "drift.json").write_text(json.dumps({"meta": meta, "recipes": rows, "skipped": skipped}, indent=1))
    table = markdown(meta, rows, skipped)
    (out / "drift.md").write_text(table)
    return table
