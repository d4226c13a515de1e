"""What every command line shares: one-line usage errors, and checked numeric flag types.

A flag's type is built from a `core.config.Range`, the same rule a config file's key is held to:
`setting(StreamConfig, "fps")` for a flag that overrides a config field, `number(...)` for the rest.
argparse calls the type while parsing, so `--fps inf` or `--port 99999` is refused before any
command imports torch. Only the standard library and core.config are imported here.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn

from core.config import Range, field_range


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is the one line `error: ...` (exit status 2), like every other error,
    and a flag is only ever its whole name: argparse's prefix matching read `serve --token T` as
    `--token-file T` and would let a later flag change what an old command line means."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)  # subcommands' parsers are made through here too
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see '{self.prog} --help')\n")


def checked(allowed: Range) -> Callable[[str], int | float]:
    """An argparse `type=` that parses a number and holds it to `allowed`."""

    def parse(text: str) -> int | float:
        try:
            return allowed.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = "integer" if allowed.integer else "number"  # argparse names the type in messages
    parse.range = allowed  # type: ignore[attr-defined]  # tests enumerate every checked flag by it
    return parse


def number(
    low: float | None = None, high: float | None = None, *, low_open: bool = False, integer: bool = False
) -> Callable[[str], int | float]:
    """A finite number in [low, high] (low excluded with `low_open`); whole with `integer`."""
    return checked(Range(low, high, low_open=low_open, integer=integer))


def setting(cls: type, name: str) -> Callable[[str], int | float]:
    """The type of a flag that overrides the config field `cls.name`: the field's own range."""
    return checked(field_range(cls, name))


# Types several commands share.
PORT = number(0, 65535, integer=True)  # 0: any free port, the one taken is printed
SECONDS = number(0, 86_400, low_open=True)  # a duration, timeout or budget: positive, at most a day
COUNT = number(1, 1_000_000, integer=True)  # how many of something: at least one
STREAM_TIME = number(0, 10**7)  # a moment of a stream, in seconds: about four months at most


def question(text: str) -> tuple[float, str]:
    """`--question TIME:TEXT`: the stream second to ask at, and the question (as one line)."""
    from core.types import one_line

    when, colon, words = text.partition(":")
    example = '12.5:"Who is winning?"'
    if not colon:
        raise argparse.ArgumentTypeError(f"'{text}' is not TIME:QUESTION; write it as {example}")
    try:
        seconds = STREAM_TIME(when.strip())
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(
            f"the time (seconds) in '{text}' {exc}; write it as {example}"
        ) from None
    words = one_line(words)
    if not words:
        raise argparse.ArgumentTypeError(f"'{text}' has no question after its time; write it as {example}")
    return seconds, words


# -- the engine's settings as flags --------------------------------------------------------------------

# Flag dest -> (config section, setting). A flag left unset keeps the config file's value (or the
# default): `config_from_args` applies `core.config.resolve_config`, the one precedence rule.
ENGINE_FLAGS: dict[str, tuple[str, str]] = {
    "model": ("model", "path"),
    "device": ("model", "device"),
    "dtype": ("model", "dtype"),
    "attn": ("model", "attn"),
    "weights": ("model", "weights"),
    "fps": ("stream", "fps"),
    "max_pixels": ("stream", "max_pixels"),
    "cache_mode": ("cache", "mode"),
    "max_new_tokens": ("generation", "max_new_tokens"),
    "min_new_tokens": ("generation", "min_new_tokens"),
    "temperature": ("generation", "temperature"),
    "top_p": ("generation", "top_p"),
    "top_k": ("generation", "top_k"),
    "repetition_penalty": ("generation", "repetition_penalty"),
    "seed": ("generation", "seed"),
}
# Flags whose presence turns one setting off.
ENGINE_SWITCHES: dict[str, tuple[str, str]] = {"no_compile": ("acceleration", "compile")}
_RUNTIME = ("device", "dtype", "attn", "weights")
_HELP = {
    "device": "auto, cpu, cuda or cuda:N",
    "dtype": "auto, bfloat16, float16 or float32",
    "attn": "attention backend: auto, sdpa, eager, flash_attention_2",
    "weights": "the language model's linear weights: bf16 (as loaded), or fp8 (needs torchao and a GPU "
    "of compute capability 8.9 or newer; fp8-dynamic and fp8-weight-only name its two recipes)",
}


def parse_resolution(text: str, flag: str = "--resolution", minimum: int = 1) -> tuple[int, int]:
    """A frame size written WIDTHxHEIGHT (1280x720) as (width, height); a one-line error otherwise."""
    from core.errors import ConfigError

    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"{flag} must look like 1280x720 (got {text!r})") from None
    if width < minimum or height < minimum:
        raise ConfigError(f"{flag} must be at least {minimum}x{minimum} (got {text!r})")
    return width, height


def add_engine_arguments(
    parser: argparse.ArgumentParser, flags: tuple[str, ...] | None = None, *, switches: bool = True
) -> None:
    """`--config`, the runtime flags (`--device`, `--dtype`, `--attn`, `--weights`, `--no-compile`) and the
    overrides of config settings (`flags`: a subset of ENGINE_FLAGS' dests, default all but `model`),
    each held to its setting's own rule. `--model` is the caller's: it is required or not by command."""
    from core.config import SECTIONS, WEIGHT_FORMATS, EvictionMode

    parser.add_argument(
        "--config",
        type=path_arg,
        help="TOML or YAML file with [stream], [cache], [generation], [model], [acceleration] "
        "(assets/config.example.toml); flags given here win over it",
    )
    chosen = [f for f in (flags or ENGINE_FLAGS) if f != "model"]
    for dest in chosen:
        if dest == "weights":
            parser.add_argument(
                "--weights",
                choices=WEIGHT_FORMATS,
                help=_HELP[dest] + " (default: bf16, or the config file's)",
            )
        elif dest in _RUNTIME:
            parser.add_argument("--" + dest, help=_HELP[dest] + " (default: auto, or the config file's)")
    if switches:
        parser.add_argument(
            "--no-compile",
            action="store_true",
            help="do not fuse kernels with torch.compile (on by default on a GPU)",
        )
    group = parser.add_argument_group("overrides of the config file")
    for dest in chosen:
        if dest in _RUNTIME:
            continue
        section, name = ENGINE_FLAGS[dest]
        option = "--" + dest.replace("_", "-")
        if dest == "cache_mode":
            group.add_argument(option, choices=[m.value for m in EvictionMode], help=f"[{section}] {name}")
        else:
            group.add_argument(option, type=setting(SECTIONS[section], name), help=f"[{section}] {name}")


def engine_overrides(args: argparse.Namespace) -> dict[str, dict]:
    """The settings the flags that were given set, by section."""
    changes: dict[str, dict] = {}
    for dest, (section, name) in ENGINE_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            changes.setdefault(section, {})[name] = value
    for dest, (section, name) in ENGINE_SWITCHES.items():
        if getattr(args, dest, False):
            changes.setdefault(section, {})[name] = False
    return changes


def config_from_args(args: argparse.Namespace):
    """The engine config of a command: its `--config` file with the given flags applied."""
    from core.config import resolve_config

    return resolve_config(getattr(args, "config", None), engine_overrides(args))


def nonempty(text: str) -> str:
    """An argparse type for a name that cannot be blank (a --model, a --source): `--model "$MODEL"` with
    the variable unset is caught here, not read as the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty value; give one (see --help)")
    return text


def server_url(text: str) -> str:
    """An argparse type for a server's URL (`python -m core serve`'s): ws:// or wss://, a host, and a
    port that is a number from 0 to 65535 if one is given."""
    from urllib.parse import urlsplit

    url = text.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (parsed on access: a port that is no number or out of range raises)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a server URL ({exc}); use ws://host:port"
        ) from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a server URL; use ws://host:port (or wss:// for a server with TLS)"
        )
    return url


def path_arg(text: str):
    """An argparse type for a file or folder: a Path, refusing an empty one (Path("") is the current
    folder, so an unset variable in `--out "$DIR"` would write there)."""
    from pathlib import Path

    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a file or folder name")
    return Path(text)
