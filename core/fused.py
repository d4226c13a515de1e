"""Fused projections: each decoder layer's q/k/v projections as one matmul, and gate/up as one.

A decode step multiplies one row by every weight matrix; at that size each matmul is a separate
launch whose tail leaves the GPU partly idle, and the gate and up projections (and q, k and v) read
the same input. Stacking their weights makes one wider matmul each: 4 matmuls a layer instead of 7.
The weights are concatenated once, when the model loads (`fuse_projections`); the outputs are the
unfused ones (the same sums, split back apart), up to the matmul kernel's summation order.

The gated MLP is replaced whole (`FusedMLP`: its forward is three lines). The attention module keeps
its stock forward, so the engine's attention functions, rotary and cache updates stay as they are: its
`q_proj`, `k_proj` and `v_proj` become `FusedPart`s of one `FusedLinear` that runs once for the input
the three are called with and hands each its slice.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def wanted(requested: bool | None, device: torch.device | str) -> bool:
    """Whether a model on `device` loads with fused projections, from `acceleration.fuse_projections`
    (None: auto). Auto fuses on a CUDA GPU: on the H200 a decode step went from 6.49 to 5.86 ms per token
    (a 2-FPS HD chunk from 176.6 to 164.3 ms), the prefill unchanged, and the fused model gave the
    unfused one's float32 tokens through compiled modules and CUDA graphs (docs/performance.md). Auto
    leaves a CPU unfused: unmeasured there, and the reference path of the tests."""
    if requested is not None:
        return bool(requested)
    return torch.device(device).type == "cuda"


def stacked_linear(parts: Sequence[nn.Linear]) -> nn.Linear:
    """One linear layer computing `parts` (same input width) side by side: their weights stacked as
    output rows, a missing bias as zeros."""
    first = parts[0]
    if any(not isinstance(p, nn.Linear) or p.in_features != first.in_features for p in parts):
        raise ValueError("only linear layers of one input width can be stacked")
    weight = first.weight
    has_bias = any(p.bias is not None for p in parts)
    out = nn.Linear(
        first.in_features,
        sum(p.out_features for p in parts),
        bias=has_bias,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        out.weight.copy_(torch.cat([p.weight for p in parts]))
        if has_bias:
            out.bias.copy_(
                torch.cat(
                    [p.bias if p.bias is not None else p.weight.new_zeros(p.out_features) for p in parts]
                )
            )
    out.requires_grad_(False)
    return out


class FusedLinear(nn.Module):
    """Several projections of one input as one matmul; `part(x, i)` is projection i's output.

    The three calls a stock attention forward makes (q, k and v of the same `hidden_states`) run the
    matmul once: the split outputs are kept until each part has taken its own, and a call with another
    input (or a part taken twice) runs the matmul again, so any call order gives the right values.
    The kept outputs are the module's state between those calls: one forward at a time, as the engine
    runs its model (the model lock, or the scheduler's one thread)."""

    def __init__(self, parts: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.linear = stacked_linear(parts)
        self.sizes = [p.out_features for p in parts]
        self._input: torch.Tensor | None = None
        self._outputs: list[torch.Tensor | None] = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(x).split(self.sizes, dim=-1)

    def part(self, x: torch.Tensor, index: int) -> torch.Tensor:
        if self._input is not x or self._outputs[index] is None:
            self._input, self._outputs = x, list(self(x))
        out, self._outputs[index] = self._outputs[index], None
        if all(o is None for o in self._outputs):
            self._input = None  # all taken: hold no activations between forwards
        return out


class FusedPart(nn.Module):
    """Projection `index` of a `FusedLinear`, where a module calls its own linear layer."""

    def __init__(self, fused: FusedLinear, index: int) -> None:
        super().__init__()
        # Kept out of the module tree: the fused linear is registered once (on the attention module), so
        # a walk over modules (quantization, .to(), state_dict) sees it once, not once per part.
        self._fused = (fused,)
        self.index = index
        self.out_features = fused.sizes[index]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fused[0].part(x, self.index)

    def extra_repr(self) -> str:
        return f"part {self.index} of qkv_proj, out_features={self.out_features}"


class FusedMLP(nn.Module):
    """A gated MLP, down(act(gate(x)) * up(x)), with gate and up as one matmul."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.gate_up_proj = stacked_linear([mlp.gate_proj, mlp.up_proj])
        self.down_proj = mlp.down_proj
        self.act_fn = mlp.act_fn
        self.intermediate_size = mlp.gate_proj.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)
        return self.down_proj(self.act_fn(gate) * up)


def fuse_projections(model: nn.Module) -> int:
    """Fuse, in place, the q/k/v and gate/up projections of every decoder layer of a Qwen2.5-VL (the
    transformers model); returns how many layers changed (0 when already fused). Inference only."""
    fused = 0
    for layer in model.model.language_model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        if isinstance(mlp, FusedMLP):
            continue
        for name in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"):
            owner = attention if name.endswith(("q_proj", "k_proj", "v_proj")) else mlp
            if not isinstance(getattr(owner, name, None), nn.Linear):
                raise TypeError(f"{type(owner).__name__} has no linear {name}: not a layout this fuses")
        qkv = FusedLinear([attention.q_proj, attention.k_proj, attention.v_proj])
        attention.qkv_proj = qkv
        for index, name in enumerate(("q_proj", "k_proj", "v_proj")):
            setattr(attention, name, FusedPart(qkv, index))
        layer.mlp = FusedMLP(mlp)
        fused += 1
    return fused
