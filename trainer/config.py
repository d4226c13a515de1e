"""The training recipe's settings: typed, frozen, validated dataclasses read from YAML.

`load_train_config(path, overrides)` reads a file such as `trainer/configs/stage1.yaml` and applies
`section.key=value` overrides from the command line (values parsed as YAML, so `optim.lr=1e-4`,
`run.max_steps=null` and `data.patterns=[a_*,b_*]` all work). Unknown sections or keys are errors
that list the valid ones. Defaults are the published StreamingVLM recipe (arXiv 2510.09608).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from core.config import ATTENTION_BACKENDS, coerce_fields, parse_error_line, raise_if
from core.errors import ConfigError
from core.paths import read_text_file

if TYPE_CHECKING:  # torch loads only for DType.torch: `python -m trainer` checks a recipe before it loads
    import torch


class Decay(enum.Enum):
    """How the learning rate falls after warmup."""

    COSINE = "cosine"  # the recipe: cosine from the peak to min_lr_ratio x peak
    LINEAR = "linear"
    CONSTANT = "constant"


class DType(enum.Enum):
    BFLOAT16 = "bfloat16"
    FLOAT32 = "float32"

    @property
    def torch(self) -> torch.dtype:
        import torch

        return {DType.BFLOAT16: torch.bfloat16, DType.FLOAT32: torch.float32}[self]


@dataclass(frozen=True)
class ModelSettings:
    """What to train: a checkpoint folder, a hub id, or 'tiny' (the random-weight test model)."""

    path: str = "Qwen/Qwen2.5-VL-7B-Instruct"
    attn: str = "auto"  # language model attention backend (core.config.ATTENTION_BACKENDS)
    num_layers: int | None = None  # keep only the first N decoder layers (benchmarks on one GPU)
    gradient_checkpointing: bool = True  # recompute each decoder layer's activations in backward

    def __post_init__(self) -> None:
        coerce_fields(self, "model")
        problems = _blank(self, "path", "a checkpoint folder, a hub id or tiny")
        if self.attn not in ATTENTION_BACKENDS:
            problems.append(f"attn must be one of {', '.join(ATTENTION_BACKENDS)} (got {self.attn!r})")
        if self.num_layers is not None and self.num_layers < 1:
            problems.append(f"num_layers must be >= 1 or null (got {self.num_layers})")
        raise_if(problems, "model")


@dataclass(frozen=True)
class DataSettings:
    """Which `<stem>_with_seeks.jsonl` files to read, and how often each counts in an epoch."""

    dir: str = "data"
    patterns: tuple[str, ...] | None = None  # file-name globs; null = every file in dir
    repeat: dict[str, int] | None = None  # pattern -> times its samples appear per epoch (2 = double weight)
    shuffle: bool = True  # a fresh permutation per epoch, from run.seed and the epoch number
    num_workers: int = 2  # DataLoader processes decoding samples ahead of the GPU
    min_pixels: int | None = None  # per frame; null = the published 100 x 28 x 28
    max_pixels: int | None = None  # per frame; null = the published 768 x 28 x 28

    def __post_init__(self) -> None:
        coerce_fields(self, "data")
        problems = _blank(self, "dir", "the dataset folder")
        if self.min_pixels is not None and self.max_pixels is not None and self.min_pixels > self.max_pixels:
            problems.append(f"min_pixels ({self.min_pixels}) must be <= max_pixels ({self.max_pixels})")
        if self.num_workers < 0:
            problems.append(f"num_workers must be >= 0 (got {self.num_workers})")
        for pattern, times in (self.repeat or {}).items():
            if times < 1:
                problems.append(f"repeat[{pattern!r}] must be >= 1 (got {times})")
        raise_if(problems, "data")


@dataclass(frozen=True)
class OptimSettings:
    """AdamW as published: no weight decay, gradients clipped to norm 1."""

    lr: float = 1e-5
    betas: tuple[float, ...] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off

    def __post_init__(self) -> None:
        coerce_fields(self, "optim")
        problems = []
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"lr must be positive (got {self.lr})")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            problems.append(f"betas must be two numbers in [0, 1) (got {list(self.betas)})")
        if not 0 < self.eps < math.inf:
            problems.append(f"eps must be a finite number > 0 (got {self.eps})")
        if not 0 <= self.weight_decay < math.inf:
            problems.append(f"weight_decay must be a finite number >= 0 (got {self.weight_decay})")
        if not 0 <= self.grad_clip < math.inf:
            problems.append(f"grad_clip must be a finite number >= 0 (got {self.grad_clip})")
        raise_if(problems, "optim")


@dataclass(frozen=True)
class ScheduleSettings:
    """Linear warmup over a fraction of the steps, then the decay down to min_lr_ratio x lr."""

    warmup_ratio: float = 0.03
    decay: Decay = Decay.COSINE
    min_lr_ratio: float = 0.0
    epochs: int = 1

    def __post_init__(self) -> None:
        coerce_fields(self, "schedule")
        problems = []
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio must be in [0, 1) (got {self.warmup_ratio})")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"min_lr_ratio must be in [0, 1] (got {self.min_lr_ratio})")
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1 (got {self.epochs})")
        raise_if(problems, "schedule")


@dataclass(frozen=True)
class BatchSettings:
    """One sample per micro-step (no packing); accumulation = global_samples / world size."""

    global_samples: int = 512  # samples per optimizer step over all ranks (8 GPUs x 64 published)
    loss_chunk: int = 1024  # labelled positions whose logits exist at once in the cross-entropy

    def __post_init__(self) -> None:
        coerce_fields(self, "batch")
        problems = []
        if self.global_samples < 1:
            problems.append(f"global_samples must be >= 1 (got {self.global_samples})")
        if self.loss_chunk < 1:
            problems.append(f"loss_chunk must be >= 1 (got {self.loss_chunk})")
        raise_if(problems, "batch")

    def accumulation(self, world: int) -> int:
        if self.global_samples % world:
            raise ConfigError(
                f"batch.global_samples={self.global_samples} is not divisible by the {world} processes; "
                "pick a multiple of the process count"
            )
        return self.global_samples // world


@dataclass(frozen=True)
class RunSettings:
    """Where the run writes, how often it saves and logs, and when it stops."""

    out: str = "runs/train"
    save_every: int = 50  # optimizer steps between resumable checkpoints (and one at the end)
    keep_last: int = 2  # older checkpoints are deleted; 0 keeps all
    log_every: int = 1
    seed: int = 42
    max_steps: int | None = None  # stop early (tests, benchmarks); null = the full schedule
    resume: bool = True  # continue from the newest checkpoint in `out` if there is one
    export: bool = True  # write a save_pretrained folder (out/export) that core.load_model opens
    tensorboard: bool = True  # if the tensorboard package is installed

    def __post_init__(self) -> None:
        coerce_fields(self, "run")
        problems = _blank(self, "out", "the run folder")
        for name in ("save_every", "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.keep_last < 0:
            problems.append(f"keep_last must be >= 0 (got {self.keep_last})")
        if not 0 <= self.seed < 2**63:  # torch.manual_seed(seed + rank) must stay a 64-bit seed
            problems.append(f"seed must be a whole number >= 0 and < 2**63 (got {self.seed})")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append(f"max_steps must be >= 1 or null (got {self.max_steps})")
        raise_if(problems, "run")


@dataclass(frozen=True)
class DistSettings:
    """FSDP2 (`fully_shard` per decoder layer, then the root) whenever torch.distributed runs."""

    fsdp: bool = True  # False: replicate, all-reduce gradients by hand (no sharding)
    cpu_offload: bool = False  # keep sharded parameters, gradients and optimizer state in host memory
    reshard_after_forward: bool = True  # free gathered layers after forward (ZeRO-3); False = ZeRO-2

    def __post_init__(self) -> None:
        coerce_fields(self, "dist")


@dataclass(frozen=True)
class PrecisionSettings:
    """bf16 compute over float32 master weights, gradients reduced in float32."""

    compute: DType = DType.BFLOAT16
    master: DType = DType.FLOAT32

    def __post_init__(self) -> None:
        coerce_fields(self, "precision")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)
    run: RunSettings = field(default_factory=RunSettings)
    dist: DistSettings = field(default_factory=DistSettings)
    precision: PrecisionSettings = field(default_factory=PrecisionSettings)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (enums as their values), as written into checkpoints and logs."""
        return _plain(dataclasses.asdict(self))


SECTIONS: dict[str, type] = typing.get_type_hints(TrainConfig)


def load_train_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML recipe (or start from the defaults) and apply `section.key=value` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        text = read_text_file(path, "config file")  # a folder, a device, a pipe or non-UTF-8: one sentence
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file '{path}' is not valid YAML: {parse_error_line(exc)}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file '{path}' must hold a mapping of sections ({', '.join(SECTIONS)})")
    where = f" in '{path}'" if path is not None else ""
    unknown = sorted(str(key) for key in data if key not in SECTIONS)
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)}{where}; known: {', '.join(SECTIONS)}")
    data = {name: dict(data.get(name) or {}) for name in SECTIONS}
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"override '{item}' must look like section.key=value (e.g. optim.lr=1e-4)")
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown section '{section}' in override '{item}'; known: {', '.join(SECTIONS)}"
            )
        try:
            data[section][name] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            data[section][name] = raw
    parts = {}
    for name, cls in SECTIONS.items():
        values = data[name]
        if not isinstance(values, dict):
            raise ConfigError(f"section '{name}'{where} must be a mapping of settings (got {values!r})")
        known = [f.name for f in dataclasses.fields(cls)]
        bad = sorted(str(key) for key in values if key not in known)
        if bad:
            raise ConfigError(
                f"unknown {name} setting(s) {', '.join(bad)}; valid {name} keys: {', '.join(known)}"
            )
        parts[name] = cls(**values)
    return TrainConfig(**parts)


# -- type checks -----------------------------------------------------------------------------------


def _blank(settings: Any, name: str, what: str) -> list[str]:
    """A path setting left empty (`run.out=''`, an unset variable) would mean the current folder."""
    if str(getattr(settings, name)).strip():
        return []
    return [f"{name} is empty; give {what} (an empty path would be the current folder)"]


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
