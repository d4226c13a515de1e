"""Configuration: what a stream looks like, what the cache keeps, how replies are sampled, which
model runs where, and which speed-ups it may use.

Frozen dataclasses, one per section, validated on construction, with the published StreamingVLM
values as defaults, gathered in `EngineConfig`. One type serves Python callers, CLI flags and
TOML/YAML files; `resolve_config` is the one precedence rule (defaults < file < flags).
Every numeric field carries its allowed `Range` (field metadata): the dataclass checks it, and the
CLIs turn the same `Range` into an argparse type (core/cli_args.py), so a flag and a file key are
held to one rule. This module imports nothing heavy, so usage errors come before torch loads.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.errors import ConfigError
from core.paths import read_text_file

PATCH_FACTOR = 28  # 14-px patches merged 2x2: one LLM token per 28x28 px per temporal group

# Upper bounds, each with its reason. Past them a run does not fail fast: it allocates until memory
# runs out or falls hopelessly behind real time.
MAX_FPS = 30.0  # at 768 tokens per frame pair, 30 FPS is 11,520 vision tokens a second (2 FPS published)
MAX_CHUNK_SECONDS = 10.0  # one reply per chunk; longer chunks are no longer live commentary (1 s published)
MAX_PIXELS = 16384 * PATCH_FACTOR * PATCH_FACTOR  # Qwen2.5-VL's own processor limit: 16,384 tokens a frame
MAX_CONTEXT_TOKENS = 128_000  # Qwen2.5-VL's position limit; no token window can be larger
MAX_WINDOW = 1024  # chunks or replies: 1024 chunks of even the smallest frames (100 tokens) fill the context
MAX_NEW_TOKENS = 4096  # one reply per chunk (20 published); more is a runaway reply, not commentary
MAX_TOP_K = 1_000_000  # larger than any vocabulary; any k >= the vocabulary means off, like 0
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 64-bit seeds
# The language model's attention implementations (core/loading.py resolves "auto"); here so that settings
# naming one are checked without importing torch.
ATTENTION_BACKENDS = ("auto", "sdpa", "eager", "flash_attention_2", "flex_attention")


@dataclass(frozen=True)
class Range:
    """The numbers a setting accepts: always finite; `low` and `high` inclusive unless `low_open`."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    integer: bool = False

    def describe(self) -> str:
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {_number(self.low)}")
        if self.high is not None:
            bounds.append(f"<= {_number(self.high)}")
        kind = "a whole number" if self.integer else "a number"
        return " ".join([kind, " and ".join(bounds)]) if bounds else f"{kind} (finite)"

    def problem(self, value: float) -> str | None:
        """Why `value` is outside the range (a phrase starting with 'must'), or None."""
        inside = isinstance(value, int) or math.isfinite(value)  # an int never is; isfinite(10**400) raises
        if inside and self.low is not None:
            inside = value > self.low if self.low_open else value >= self.low
        if inside and self.high is not None:
            inside = value <= self.high
        return None if inside else f"must be {self.describe()} (got {_shown(value)})"

    def parse(self, text: str) -> int | float:
        """A number typed by a user, checked; ValueError says what is allowed."""
        try:
            value = int(text) if self.integer else float(text)
        except ValueError:
            raise ValueError(f"must be {self.describe()} (got {_shown(text)})") from None
        problem = self.problem(value)
        if problem:
            raise ValueError(problem)
        return value


def _shown(value: Any) -> str:
    """A value for an error line: never more than a few dozen characters."""
    try:
        text = repr(value) if isinstance(value, str) else str(value)
    except ValueError:  # an int past Python's 4300-digit printing limit
        return "a number too large to print"
    return text if len(text) <= 40 else text[:37] + "..."


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"  # 12845056, not 1.28451e+07


def bounded(default: Any, allowed: Range) -> Any:
    """A dataclass field whose value must lie in `allowed` (checked by `range_problems`)."""
    return field(default=default, metadata={"range": allowed})


def field_range(cls: type, name: str) -> Range:
    """The allowed range of a numeric config field (the CLI builds its flag's type from it)."""
    return next(f.metadata["range"] for f in dataclasses.fields(cls) if f.name == name)


def range_problems(config: Any) -> dict[str, str]:
    """Field name -> '<field> must be ...' for every field outside its range (None means unset: allowed)."""
    problems = {}
    for f in dataclasses.fields(config):
        allowed, value = f.metadata.get("range"), getattr(config, f.name)
        if allowed is not None and value is not None:
            problem = allowed.problem(value)
            if problem:
                problems[f.name] = f"{f.name} {problem}"
    return problems


class EvictionMode(enum.Enum):
    """How the KV cache forgets (the efficiency benchmark compares all three)."""

    STREAMING = "streaming"  # sink + windows, evict in place, delta-rotate moved keys (the method)
    NONE = "none"  # full attention: keep everything until memory runs out
    RECOMPUTE = "recompute"  # same windows, but rebuild the whole cache from the kept tokens every chunk


@dataclass(frozen=True)
class StreamConfig:
    """How frames are sampled and sized. Defaults: 2 FPS, 1-second chunks, <= 768 tokens per frame pair."""

    fps: float = bounded(2.0, Range(0, MAX_FPS, low_open=True))
    chunk_seconds: float = bounded(1.0, Range(0, MAX_CHUNK_SECONDS, low_open=True))
    min_pixels: int = bounded(
        100 * PATCH_FACTOR * PATCH_FACTOR, Range(PATCH_FACTOR**2, MAX_PIXELS, integer=True)
    )
    max_pixels: int = bounded(
        768 * PATCH_FACTOR * PATCH_FACTOR, Range(PATCH_FACTOR**2, MAX_PIXELS, integer=True)
    )

    def __post_init__(self) -> None:
        coerce_fields(self, "stream")
        bad = range_problems(self)
        problems = list(bad.values())
        if not {"fps", "chunk_seconds"} & bad.keys():  # both in range: together they must make whole frames
            n = self.fps * self.chunk_seconds
            if abs(n - round(n)) > 1e-6 or round(n) < 1:
                problems.append(
                    f"fps x chunk_seconds must be a whole number of frames (got {self.fps} x {self.chunk_seconds})"
                )
        if not {"min_pixels", "max_pixels"} & bad.keys() and self.max_pixels < self.min_pixels:
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
    """What the compact KV cache keeps (docs/architecture.md, "The method"). Defaults are the published ones."""

    mode: EvictionMode = EvictionMode.STREAMING
    # first tokens of the previous-text turn, kept forever
    sink_tokens: int = bounded(512, Range(0, MAX_CONTEXT_TOKENS, integer=True))
    # last tokens of the previous-text turn beyond the sink
    text_window_tokens: int = bounded(512, Range(0, MAX_CONTEXT_TOKENS, integer=True))
    # chunks whose vision tokens stay in the cache
    vision_window_chunks: int = bounded(16, Range(1, MAX_WINDOW, integer=True))
    # replies kept in place before they retire into previous text
    text_window_replies: int = bounded(16, Range(1, MAX_WINDOW, integer=True))

    def __post_init__(self) -> None:
        coerce_fields(self, "cache")
        raise_if(list(range_problems(self).values()), "cache")

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

    max_new_tokens: int = bounded(20, Range(1, MAX_NEW_TOKENS, integer=True))
    # the end of turn is suppressed until this many tokens (benchmarks force 20); at most max_new_tokens
    min_new_tokens: int = bounded(0, Range(0, MAX_NEW_TOKENS, integer=True))
    temperature: float = bounded(0.9, Range(0, 10))  # above ~2 replies are noise already
    top_p: float = bounded(1.0, Range(0, 1, low_open=True))
    top_k: int = bounded(0, Range(0, MAX_TOP_K, integer=True))
    repetition_penalty: float = bounded(1.05, Range(0, 10, low_open=True))
    # the penalty sees only the tokens of this many recent replies
    repetition_window_replies: int = bounded(16, Range(0, MAX_WINDOW, integer=True))
    suppress: tuple[str, ...] = ()  # texts whose tokens are never sampled
    seed: int | None = bounded(None, Range(0, MAX_SEED, integer=True))

    def __post_init__(self) -> None:
        coerce_fields(self, "generation")
        bad = range_problems(self)
        problems = list(bad.values())
        if (
            not {"min_new_tokens", "max_new_tokens"} & bad.keys()
            and self.min_new_tokens > self.max_new_tokens
        ):
            problems.append(
                f"min_new_tokens must be at most max_new_tokens={self.max_new_tokens} (got {self.min_new_tokens})"
            )
        raise_if(problems, "generation")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")
# The language model's linear weights: "bf16" as loaded (in the dtype above), or FP8 through torchao;
# "fp8" is the recipe core/quantize.py picks, the other two name a recipe (core/quantize.py, RECIPES).
WEIGHT_FORMATS = ("bf16", "fp8", "fp8-dynamic", "fp8-weight-only")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass(frozen=True)
class ModelConfig:
    """Which checkpoint, and on what it runs (core/loading.py resolves "auto")."""

    path: str = ""  # a local folder, a hub id, or "tiny"; the CLIs' --model sets it
    device: str = "auto"  # auto, cpu, cuda or cuda:N
    dtype: str = "auto"  # auto: bfloat16 on a GPU that has it, float32 on a CPU
    attn: str = "auto"  # the language model's attention implementation
    weights: str = "bf16"  # bf16 (as loaded), or fp8 on a GPU of compute capability >= 8.9 (torchao)

    def __post_init__(self) -> None:
        coerce_fields(self, "model")
        problems = []
        if self.weights not in WEIGHT_FORMATS:
            problems.append(f"weights must be one of {', '.join(WEIGHT_FORMATS)} (got {self.weights!r})")
        if not _DEVICE.match(self.device):
            problems.append(f"device must be auto, cpu, cuda or cuda:N (got {self.device!r})")
        if self.dtype not in DTYPE_NAMES:
            problems.append(f"dtype must be one of {', '.join(DTYPE_NAMES)} (got {self.dtype!r})")
        if self.attn not in ATTENTION_BACKENDS:
            problems.append(f"attn must be one of {', '.join(ATTENTION_BACKENDS)} (got {self.attn!r})")
        raise_if(problems, "model")


# The static decode step's attention for one query row against the whole masked cache: "matmul" is two
# batched matmuls around a float32 softmax; the others pick a PyTorch SDPA backend ("auto": PyTorch's
# choice through core.attention). On an H100 with a 12k-token cache (docs/performance.md): auto
# (cuDNN, shared key heads) 8.5 ms per token, matmul 9.2 ms, the stock per-head-repeated path 15.5 ms.
DECODE_ATTENTIONS = ("auto", "matmul", "math", "efficient", "cudnn")


@dataclass(frozen=True)
class AccelerationConfig:
    """Which speed-ups to run, each true, false or auto (`None`, or "auto" in a file): on where it
    pays and works. core/acceleration.py decides what runs on the device, once per engine."""

    compile: bool | None = None  # torch.compile of the norms, MLPs and vision blocks
    compile_in_background: bool | None = None  # run eagerly while compiling, then switch (core/warmup.py)
    cuda_graphs: bool | None = None  # the vision tower and decode steps replayed as CUDA graphs
    static_decode: bool | None = None  # decode over fixed-shape buffers (what the graphs replay)
    decode_attention: str = "auto"  # the static step's attention: auto, matmul, math, efficient, cudnn
    overlap: bool | None = None  # queue the next decode step before the sampled token is read
    triton: bool | None = None  # the fused rotation kernel of eviction
    # q/k/v and gate/up projections as one matmul each (core/fused.py); applied when the model loads,
    # so it is the loading config's that counts; auto: on a CUDA GPU
    fuse_projections: bool | None = None
    # each session's tokens independent of the other sessions on the engine, bit for bit (core/scheduler.py:
    # decode steps in batches of one fixed size, each chunk's vision and prefill run alone); auto: off
    batch_invariant: bool | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) == "auto" and f.name != "decode_attention":
                object.__setattr__(self, f.name, None)
        coerce_fields(self, "acceleration")
        if self.decode_attention not in DECODE_ATTENTIONS:
            raise ConfigError(
                f"acceleration.decode_attention must be one of {', '.join(DECODE_ATTENTIONS)} "
                f"(got {self.decode_attention!r})"
            )


@dataclass(frozen=True)
class EngineConfig:
    """Everything an engine is built from: one object, from a file, CLI flags or Python
    (`resolve_config` applies the one precedence rule: defaults, then the file, then overrides)."""

    stream: StreamConfig = field(default_factory=StreamConfig)
    cache: CachePolicy = field(default_factory=CachePolicy)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    acceleration: AccelerationConfig = field(default_factory=AccelerationConfig)


SECTIONS = {
    "stream": StreamConfig,
    "cache": CachePolicy,
    "generation": GenerationConfig,
    "model": ModelConfig,
    "acceleration": AccelerationConfig,
}


def resolve_config(
    path: str | Path | None = None, overrides: dict[str, dict[str, Any]] | None = None
) -> EngineConfig:
    """The one precedence rule: the defaults, then the file at `path` (if any), then `overrides`
    ({section: {setting: value}}, e.g. CLI flags that were given); every value checked on the way."""
    base = load_config_file(path) if path else EngineConfig()
    parts = {}
    for name, cls in SECTIONS.items():
        changes = (overrides or {}).get(name) or {}
        current = getattr(base, name)
        if changes:
            values = {f.name: getattr(current, f.name) for f in dataclasses.fields(cls)}
            current = config_from_mapping(cls, {**values, **changes}, name)
        parts[name] = current
    return EngineConfig(**parts)


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


def parse_error_line(exc: Exception) -> str:
    """A TOML or YAML parser's complaint in one line: what it expected, and where (YAML's own message
    quotes the text around both marks over several lines)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} (at line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(exc).split())


def load_config_file(path: str | Path) -> EngineConfig:
    """Read the sections of `EngineConfig` ([stream], [cache], [generation], [model], [acceleration])
    from a TOML or YAML file; sections left out keep their defaults."""
    path = Path(path)
    text = read_text_file(path, "config file")
    kind = {".toml": "TOML", ".yaml": "YAML", ".yml": "YAML"}.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(
            f"config file '{path}' is neither TOML (.toml) nor YAML (.yaml, .yml), by its name; give one of "
            "those (assets/config.example.toml)"
        )
    try:
        data = tomllib.loads(text) if kind == "TOML" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file '{path}' is not valid {kind}: {parse_error_line(exc)}") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections ({', '.join(SECTIONS)})")
    unknown = sorted(str(key) for key in data if key not in SECTIONS)
    if unknown:
        raise ConfigError(
            f"unknown section(s) {', '.join(unknown)} in '{path}'; known: {', '.join(SECTIONS)}"
        )
    try:
        parts = {name: config_from_mapping(cls, data.get(name) or {}, name) for name, cls in SECTIONS.items()}
    except ConfigError as exc:
        raise ConfigError(f"config file '{path}': {exc}") from None
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
