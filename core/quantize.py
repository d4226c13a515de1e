"""8-bit weights: the language model's linear layers in FP8 through torchao (`--weights fp8`).

A decode step reads every weight of the language model once per token (15.2 GB for the 7B in bf16),
so halving the bytes per weight is the largest lever on decode left (docs/performance.md). Two torchao
recipes, one option value each (`core.config.WEIGHT_FORMATS`):

- `fp8-dynamic`: float8 (e4m3) weights with one scale per output row, and each activation row
  quantized to float8 on the fly; the matmul is an FP8 tensor-core GEMM (`torch._scaled_mm`), which
  needs compute capability 8.9 or newer (Ada, Hopper, Blackwell).
- `fp8-weight-only`: the same float8 weights, dequantized to the activations' dtype for a bf16 matmul;
  its bytes are halved only where a compiled kernel fuses the dequantisation into the matmul.

`fp8` is `FP8_DEFAULT`: of the two, the faster on the H200 at batch 1 (8.5 against 17.9 ms per decoded
token; both slower than bf16's 6.5: docs/performance.md, "8-bit weights and fused projections").
Only the decoder layers' linear layers change: the vision tower (its time is compute-bound, and it
feeds every token) and the LM head (its logits choose the tokens) stay in the loaded dtype.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.config import WEIGHT_FORMATS
from core.errors import ConfigError

log = logging.getLogger(__name__)

MIN_CAPABILITY = (8, 9)  # FP8 tensor cores: Ada (8.9), Hopper (9.0) and later
GEMM_MULTIPLE = 16  # an FP8 GEMM needs both widths of the weight to be multiples of 16


@dataclass(frozen=True)
class Recipe:
    name: str
    dynamic_activations: bool  # activations quantized per row on the fly (an FP8 GEMM) or left as they are
    emulated_on_cpu: bool  # torchao runs it on a CPU (dequantising), so its drift is measurable there


RECIPES = {
    r.name: r
    for r in (
        Recipe("fp8-dynamic", dynamic_activations=True, emulated_on_cpu=False),
        Recipe("fp8-weight-only", dynamic_activations=False, emulated_on_cpu=True),
    )
}
FP8_DEFAULT = "fp8-dynamic"


def recipe_of(weights: str) -> Recipe | None:
    """The torchao recipe a `weights` setting stands for (None for bf16: the weights as loaded)."""
    if weights not in WEIGHT_FORMATS:
        raise ConfigError(f"unknown weights '{weights}'; use one of {', '.join(WEIGHT_FORMATS)}")
    if weights == "bf16":
        return None
    return RECIPES[FP8_DEFAULT if weights == "fp8" else weights]


def wrong_dtype(weights: str, dtype: torch.dtype) -> str | None:
    """Why `weights` cannot quantize a model loaded in `dtype`, as one sentence, or None when it can:
    torchao's per-row FP8 GEMM takes bfloat16 weights only."""
    recipe = recipe_of(weights)
    if recipe is None or not recipe.dynamic_activations or dtype == torch.bfloat16:
        return None
    name = str(dtype).removeprefix("torch.")
    return (
        f"weights {weights} need the model in bfloat16 (its per-row FP8 GEMM takes bfloat16 weights), and it "
        f"is loaded in {name}; use --dtype bfloat16, or --weights fp8-weight-only"
    )


def missing(
    weights: str, device: torch.device, *, dtype: torch.dtype | None = None, emulate: bool = False
) -> str | None:
    """Why `weights` cannot run on `device` (with the model in `dtype`, when given) here, as one sentence,
    or None when it can.

    `emulate`: a recipe torchao can run on a CPU (by dequantising) is accepted there, for measuring its
    numerical drift (evals/drift.py); serving never emulates, it would be slower than bf16."""
    recipe = recipe_of(weights)
    if recipe is None:
        return None
    needs = (
        f"weights {weights} needs the torchao package (pip install 'streamvlm[fp8]') and an NVIDIA GPU "
        f"of compute capability {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer (Ada, Hopper)"
    )
    lacking = []
    if importlib.util.find_spec("torchao") is None:
        lacking.append("torchao is not installed")
    if device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        if capability < MIN_CAPABILITY:
            name = torch.cuda.get_device_name(device)
            lacking.append(f"{device} ({name}) has compute capability {capability[0]}.{capability[1]}")
    elif not (emulate and device.type == "cpu" and recipe.emulated_on_cpu):
        lacking.append(f"the model runs on {device.type} here")
    if lacking:
        return f"{needs}; {' and '.join(lacking)}"
    return wrong_dtype(weights, dtype) if dtype is not None else None


def require(weights: str, device: torch.device, dtype: torch.dtype | None = None) -> None:
    """Refuse, with the one sentence of `missing`, weights that cannot run on `device` in `dtype` (for
    serving)."""
    reason = missing(weights, device, dtype=dtype)
    if reason:
        raise ConfigError(reason)


def torchao_config(recipe: Recipe) -> Any:
    """The torchao config of `recipe`: float8 e4m3 weights with one scale per output row."""
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Float8WeightOnlyConfig,
        PerRow,
    )

    # set_inductor_config=False: torchao would otherwise switch process-wide inductor options (coordinate
    # descent tuning among them), changing how every compiled module of the engine builds, not just these.
    if recipe.dynamic_activations:
        return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
    return Float8WeightOnlyConfig(granularity=PerRow(), set_inductor_config=False)


def quantizable(linear: nn.Module) -> bool:
    """A plain linear layer not yet quantized whose widths an FP8 GEMM takes (others stay as loaded)."""
    if not isinstance(linear, nn.Linear) or type(linear.weight) is not nn.Parameter:
        return False  # a torchao weight is a tensor subclass: already quantized
    return linear.in_features % GEMM_MULTIPLE == 0 and linear.out_features % GEMM_MULTIPLE == 0


def quantize_language_model(model: nn.Module, weights: str) -> int:
    """Quantize, in place, the linear layers of the decoder layers of a Qwen2.5-VL (the transformers
    model) with the recipe `weights` names; returns how many were quantized. Fused projections
    (core/fused.py) are quantized as the one linear each is, so fuse first.

    No device check here (`require` is the gate for serving): torchao raises on a device its recipe
    cannot run on. A dtype the recipe cannot take is refused with `wrong_dtype`'s sentence."""
    recipe = recipe_of(weights)
    if recipe is None:
        return 0
    layers = model.model.language_model.layers
    chosen = {id(m) for m in layers.modules() if quantizable(m)}
    dtypes = {m.weight.dtype for m in layers.modules() if id(m) in chosen}
    reason = next(filter(None, (wrong_dtype(weights, d) for d in dtypes)), None)
    if reason:  # before torchao's bare assertion, on a model built without `require`
        raise ConfigError(reason)
    # Said on every load while FP8 is slower than bf16 on the H200 (docs/performance.md, "8-bit weights").
    log.warning(
        "weights %s are experimental: on an H200 they halve the weights' memory but run slower than bf16 "
        "at batch 1 (docs/performance.md, '8-bit weights')",
        weights,
    )
    from torchao.quantization import quantize_

    if chosen:
        quantize_(layers, torchao_config(recipe), filter_fn=lambda module, _name: id(module) in chosen)
    return len(chosen)


def weight_bytes(module: nn.Module) -> int:
    """Bytes of a module's weights as stored (a torchao float8 weight: its float8 data and scales)."""
    total = 0
    for p in module.parameters():
        inner = getattr(p, "qdata", None)
        if inner is not None:
            total += inner.numel() * inner.element_size() + p.scale.numel() * p.scale.element_size()
        else:
            total += p.numel() * p.element_size()
    return total
