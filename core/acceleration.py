"""Which speed-ups an engine runs, decided once at start and logged in one line.

Each option is asked for (`core.config.AccelerationConfig`, the `[acceleration]` section) as on,
off or auto (on where it pays and works). `decide` turns the request into what will run on the model's device and says why anything is off; the model
(compile, vision graphs, Triton) and the engine (static decode step, its attention, overlap) read
the decision and nothing else, so no module keeps a switch of its own.

- `compile`: torch.compile of the language model's norms and MLPs and of the vision blocks
  (GPU only by default: on a CPU the fusion does not pay for its compile time);
- `compile_in_background`: compile on a thread while the first chunks run eagerly, and switch when
  it is done (core/warmup.py), rather than stall the first chunk for the compilation;
- `cuda_graphs`: the vision tower and the decode step replayed as CUDA graphs (CUDA only);
- `static_decode`: decode over fixed-shape buffers (needed for graphs; runs on a CPU for tests);
- `decode_attention`: the static step's attention kernel (`matmul`, or a PyTorch SDPA backend);
- `overlap`: queue the next decode step before the host reads the sampled token (only pays when a
  launch returns before the step has run: a graph replay);
- `triton`: the fused delta-rotation kernel of eviction (CUDA with Triton; else PyTorch ops);
- `batch_invariant`: not a speed-up but its price: a session's tokens do not depend on which other
  sessions share the engine's batches (core/scheduler.py says how); off unless asked for.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field

import torch

from core.config import AccelerationConfig
from core.errors import ConfigError


@dataclass(frozen=True)
class Acceleration:
    """What runs, and why each option that is off is off."""

    compile: bool
    compile_in_background: bool
    cuda_graphs: bool
    static_decode: bool
    decode_attention: str
    overlap: bool
    triton: bool
    why_off: dict[str, str] = field(default_factory=dict)
    batch_invariant: bool = False

    @classmethod
    def decide(cls, requested: AccelerationConfig, device: torch.device) -> Acceleration:
        """Resolve a request on `device`. Asking for something the device cannot run is an error;
        auto turns on what pays there."""
        cuda = device.type == "cuda"
        why: dict[str, str] = {}

        def choose(name: str, asked: bool | None, works: bool, pays: bool, reason: str) -> bool:
            if asked and not works:
                raise ConfigError(f"acceleration.{name} needs {reason}; leave it on auto or turn it off")
            on = works and pays if asked is None else asked
            if not on:
                why[name] = "off by request" if asked is False else reason
            return on

        gpu = "a CUDA GPU"
        compile_ = choose("compile", requested.compile, True, cuda, gpu)
        background = choose(
            "compile_in_background", requested.compile_in_background, compile_, True, "compile on"
        )
        static = choose("static_decode", requested.static_decode, True, cuda, gpu)
        graphs = choose("cuda_graphs", requested.cuda_graphs, cuda, True, gpu)
        has_triton = importlib.util.find_spec("triton") is not None
        triton = choose("triton", requested.triton, cuda and has_triton, True, "a CUDA GPU and Triton")
        overlap = choose(
            "overlap",
            requested.overlap,
            static,
            graphs,
            "CUDA graphs (a launch must return before the step runs)" if static else "the static decode step",
        )
        attention = requested.decode_attention if static else "none"  # only the static step has one
        invariant = choose(
            "batch_invariant",
            requested.batch_invariant,
            True,
            False,
            "asked for only: it costs batched throughput",
        )
        return cls(compile_, background, graphs, static, attention, overlap, triton, why, invariant)

    def describe(self) -> str:
        """One line for the log: every option, and the reason for each one that is off."""
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "why_off":
                continue
            if not isinstance(value, bool):
                parts.append(f"{f.name} {value}")
            elif value:
                parts.append(f"{f.name} on")
            else:
                parts.append(f"{f.name} off ({self.why_off.get(f.name, 'off')})")
        return "acceleration: " + ", ".join(parts)

    def while_compiling(self) -> Acceleration:
        """What runs while the compile runs in the background: everything else, over the eager modules
        (CUDA graphs of them too: captured again after the switch)."""
        return self.without("compile", "waiting for the background compilation") if self.compile else self

    def without(self, name: str, reason: str) -> Acceleration:
        """The same decision with one option turned off, for a reason found when trying it."""
        return dataclasses.replace(self, **{name: False}, why_off={**self.why_off, name: reason})
