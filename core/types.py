"""The two values that flow through streamvlm, frames in and commentary out, the `with` protocol
of everything that must be closed, and the interface of a commentary session."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

import numpy as np


@dataclass(frozen=True, slots=True)
class Frame:
    """One RGB frame (uint8, [height, width, 3]) and its time in stream seconds."""

    rgb: np.ndarray
    t: float


def one_line(text: str) -> str:
    """Text as one line: whitespace runs (newlines too) become one space, control characters go.
    A line of commentary is one spoken line; a question goes into its turn as one line."""
    return " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())


ANSWER_PREFIX = "A: "  # how an answer is marked where it shows as text (subtitles, the CLI)


@dataclass(frozen=True, slots=True)
class Commentary:
    """One line of commentary for the chunk spanning [start, end) stream seconds; with a `question`,
    the line is the model's answer to it (asked in that chunk), not commentary."""

    start: float
    end: float
    text: str
    question: str | None = None

    @property
    def is_answer(self) -> bool:
        return self.question is not None

    @property
    def marked(self) -> str:
        """The text as shown: an answer prefixed with ANSWER_PREFIX, commentary as it is."""
        return ANSWER_PREFIX + self.text if self.is_answer else self.text


class Closeable:
    """A `with` block for anything with a `close()`: sources, sessions, writers, recorders."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@runtime_checkable
class CommentarySession(Protocol):
    """One stream being commentated, wherever the model runs.

    `core.engine.Session` (local), `core.remote.client.RemoteSession` (a server's) and the efficiency
    benchmark's stock-transformers baseline all satisfy it; the pipeline, the real-time runner and
    the server take any of them. Chunks come in stream order; `close` is safe to call twice.
    """

    def push(self, frames: Sequence[np.ndarray | Frame], t_start: float, t_end: float) -> list[Commentary]:
        """Feed one chunk of frames spanning [t_start, t_end) stream seconds; return its commentary."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...
