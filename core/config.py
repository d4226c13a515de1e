"""Configuration: what a stream looks like, what the cache keeps, how replies are sampled.

Three frozen dataclasses, validated on construction, with the published StreamingVLM values as
defaults. One type serves Python callers, CLI flags and TOML/YAML files (`load_config_file`).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.errors import ConfigError

PATCH_FACTOR = 28  # 14-px patches merged 2x2: one LLM token per 28x28 px per temporal group


class EvictionMode(enum.Enum):
    """How the KV cache forgets (the efficiency benchmark compares all three)."""

    STREAMING = "streaming"  # sink + windows, evict in place, delta-rotate moved keys (the method)
    NONE = "none"  # full attention: keep everything until memory runs out
    RECOMPUTE = "recompute"  # same windows, but rebuild the whole cache from the kept tokens every chunk


@dataclass(frozen=True)
class StreamConfig:
    """How frames are sampled and sized. Defaults: 2 FPS, 1-second chunks, <= 768 tokens per frame pair."""

    fps: float = 2.0
    chunk_seconds: float = 1.0
    min_pixels: int = 100 * PATCH_FACTOR * PATCH_FACTOR
    max_pixels: int = 768 * PATCH_FACTOR * PATCH_FACTOR

    def __post_init__(self) -> None:
        coerce_fields(self, "stream")
        problems = []
        if not (self.fps > 0 and math.isfinite(self.fps)):
            problems.append(f"fps must be positive (got {self.fps})")
        if not (self.chunk_seconds > 0 and math.isfinite(self.chunk_seconds)):
            problems.append(f"chunk_seconds must be positive (got {self.chunk_seconds})")
        elif self.fps > 0:
            n = self.fps * self.chunk_seconds
            if abs(n - round(n)) > 1e-6 or round(n) < 1:
                problems.append(
                    f"fps x chunk_seconds must be a whole number of frames (got {self.fps} x {self.chunk_seconds})"
                )
        if self.min_pixels < PATCH_FACTOR * PATCH_FACTOR:
            problems.append(
                f"min_pixels must be at least {PATCH_FACTOR}x{PATCH_FACTOR} (got {self.min_pixels})"
            )
        if self.max_pixels < self.min_pixels:
            problems.append(f"max_pixels ({self.max_pixels}) must be >= min_pixels ({self.min_pixels})")
        raise_if(problems, "stream")

    @property
    def frames_per_chunk(self) -> int:
        return round(self.fps * self.chunk_seconds)


@dataclass(frozen=True)
class CacheBudget:
    """What a cache policy costs at steady state, for logging at start."""

    tokens: int
    bytes: int

    def __str__(self) -> str:
        return f"{self.tokens:,} tokens, {self.bytes / 2**30:.2f} GiB of K/V"


@dataclass(frozen=True)
class CachePolicy:
    """What the compact KV cache keeps (DESIGN.md section 1). Defaults are the published ones."""

    mode: EvictionMode = EvictionMode.STREAMING
    sink_tokens: int = 512  # first tokens of the previous-text turn, kept forever
    text_window_tokens: int = 512  # last tokens of the previous-text turn beyond the sink
    vision_window_chunks: int = 16  # chunks whose vision tokens stay in the cache
    text_window_replies: int = 16  # replies kept in place before they retire into previous text

    def __post_init__(self) -> None:
        coerce_fields(self, "cache")
        problems = []
        for name in ("sink_tokens", "text_window_tokens"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        for name in ("vision_window_chunks", "text_window_replies"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        raise_if(problems, "cache")

    @property
    def evicts(self) -> bool:
        return self.mode is not EvictionMode.NONE

    def keeps_vision(self, round: int, current: int) -> bool:
        """Whether round `round`'s vision stays once round `current` is added."""
        return not self.evicts or round > current - self.vision_window_chunks

    def keeps_text(self, round: int, current: int) -> bool:
        """Whether round `round`'s reply stays in place once round `current` is added."""
        return not self.evicts or round > current - self.text_window_replies

    def budget(
        self,
        *,
        fixed_tokens: int,
        vision_tokens_per_chunk: int,
        text_tokens_per_round: int,
        bytes_per_token: int,
    ) -> CacheBudget:
        """Steady-state cache size: the fixed prefix, the previous-text windows and the round windows."""
        if not self.evicts:
            raise ConfigError(
                "a cache that never evicts has no steady-state budget; it grows with the stream"
            )
        tokens = (
            fixed_tokens
            + self.sink_tokens
            + self.text_window_tokens
            + self.vision_window_chunks * vision_tokens_per_chunk
            + self.text_window_replies * text_tokens_per_round
        )
        return CacheBudget(tokens=tokens, bytes=tokens * bytes_per_token)


@dataclass(frozen=True)
class GenerationConfig:
    """How each reply is sampled. temperature 0 means greedy; top_k 0 and top_p 1 mean off."""

    max_new_tokens: int = 20
    min_new_tokens: int = 0  # the end of turn is suppressed until this many tokens (benchmarks force 20)
    temperature: float = 0.9
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.05
    repetition_window_replies: int = 16  # the penalty sees only the tokens of this many recent replies
    suppress: tuple[str, ...] = ()  # texts whose tokens are never sampled
    seed: int | None = None

    def __post_init__(self) -> None:
        coerce_fields(self, "generation")
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1 (got {self.max_new_tokens})")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            problems.append(
                f"min_new_tokens must be between 0 and max_new_tokens={self.max_new_tokens} (got {self.min_new_tokens})"
            )
        if not (0 <= self.temperature < math.inf):
            problems.append(f"temperature must be a finite number >= 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0 (got {self.top_k})")
        if not (0 < self.repetition_penalty < math.inf):
            problems.append(f"repetition_penalty must be > 0 (got {self.repetition_penalty})")
        if self.repetition_window_replies < 0:
            problems.append(f"repetition_window_replies must be >= 0 (got {self.repetition_window_replies})")
        raise_if(problems, "generation")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class EngineConfig:
    """The three configs together, as read from one file."""

    stream: StreamConfig = field(default_factory=StreamConfig)
    cache: CachePolicy = field(default_factory=CachePolicy)
    generation: GenerationConfig = field(default_factory=GenerationConfig)


_SECTIONS = {"stream": StreamConfig, "cache": CachePolicy, "generation": GenerationConfig}


def config_from_mapping(cls: type, values: Any, where: str) -> Any:
    """Build a config dataclass from a plain mapping; unknown keys and wrong types are errors."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping of settings (got {type(values).__name__}: {values!r})")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(key) for key in values if key not in known)
    if unknown:
        raise ConfigError(
            f"unknown {where} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return cls(**values)


def coerce_fields(config: Any, section: str) -> None:
    """Check every field's type: ints become floats where a float is due, numbers written as
    strings ('1e-5', which YAML 1.1 reads as text) floats, lists tuples, strings enums."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        coerced = coerce(hints[f.name], value, f"{section}.{f.name}")
        if coerced is not value:
            object.__setattr__(config, f.name, coerced)


def load_config_file(path: str | Path) -> EngineConfig:
    """Read [stream], [cache] and [generation] sections from a TOML or YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found; pass an existing .toml or .yaml file")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(
            f"config file '{path}' is not valid {path.suffix.lstrip('.').upper()}: {exc}"
        ) from None
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections ({', '.join(_SECTIONS)})")
    unknown = sorted(str(key) for key in data if key not in _SECTIONS)
    if unknown:
        raise ConfigError(
            f"unknown section(s) {', '.join(unknown)} in '{path}'; known: {', '.join(_SECTIONS)}"
        )
    parts = {name: config_from_mapping(cls, data.get(name) or {}, name) for name, cls in _SECTIONS.items()}
    return EngineConfig(**parts)


def coerce(hint: Any, value: Any, where: str) -> Any:
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        if isinstance(value, hint):
            return value
        try:
            return hint(value)
        except ValueError:
            choices = ", ".join(m.value for m in hint)
            raise ConfigError(f"{where} must be one of {choices} (got {value!r})") from None
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list (got {type(value).__name__}: {value!r})")
        return tuple(coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping (got {type(value).__name__}: {value!r})")
        return {coerce(args[0], k, where): coerce(args[1], v, f"{where}[{k!r}]") for k, v in value.items()}
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    raise ConfigError(
        f"{where} has the wrong type: it must be {getattr(hint, '__name__', hint)} "
        f"(got {type(value).__name__}: {value!r})"
    )


def raise_if(problems: list[str], section: str) -> None:
    if problems:
        raise ConfigError(f"invalid {section} config: " + "; ".join(problems))
