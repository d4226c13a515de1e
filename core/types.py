"""The two values that flow through streamvlm, frames in and commentary out, and the `with` protocol
of everything that must be closed."""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Self

import numpy as np


@dataclass(frozen=True, slots=True)
class Frame:
    """One RGB frame (uint8, [height, width, 3]) and its time in stream seconds."""

    rgb: np.ndarray
    t: float


@dataclass(frozen=True, slots=True)
class Commentary:
    """One line of commentary for the chunk spanning [start, end) stream seconds."""

    start: float
    end: float
    text: str


class Closeable:
    """A `with` block for anything with a `close()`: sources, sessions, writers, recorders."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
