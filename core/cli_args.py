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
    """argparse, but a usage error is the one line `error: ...` (exit status 2), like every other error."""

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
