"""Commentary of one video span through the streaming engine, as the comparative benchmarks need it.

`commentate` samples the file at the engine's FPS from `start` to `end` (absolute seconds, so
time labels match the video), groups the frames into 1-second chunks and pushes them through a
session, returning every reply as `{response, start_time, end_time}`. With `restart_every`, a new
session starts every that many seconds (the protocol for models that cannot stream forever); the
new session's previous text is the seed plus the commentary generated so far, never ground truth
from after `start`.

`clip_span` is the one rule for a span's times (finite, from 0 s, ending after it starts and before
the video does); its errors name what set the times (a flag such as `--start`, or a data file's
row), since that is where the fix goes. Benchmarks call it on every item before loading the model,
so a bad span fails in seconds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from core.types import Closeable, Commentary
from evals.runner import DataError
from evals.video import duration, frames_at, sample_times

if TYPE_CHECKING:  # the benchmarks pass an engine in; importing torch here would slow every usage error
    from core.engine import StreamingEngine


def check_span(start: float, end: float | None, *, origin: str, hint: str) -> None:
    """The times alone (no video needed): finite, from 0 s, and end (None: the video's end) after start.

    A bad span is a DataError "<origin>: <what is wrong>; <hint>": `origin` names the flag or data
    field that set the times and `hint` says how to fix them.
    """
    if not (math.isfinite(start) and start >= 0):
        problem = f"the clip starts at {start:g} s; a start must be a finite time of 0 s or more"
    elif end is not None and not (math.isfinite(end) and end > start):
        problem = f"the clip ends at {end:g} s, not after its start at {start:g} s"
    else:
        return
    raise DataError(f"{origin}: {problem}; {hint}")


def clip_span(path: Path, start: float, end: float | None, *, origin: str, hint: str) -> tuple[float, float]:
    """[start, end) of the video at `path`, end capped at its length; errors as in `check_span`."""
    check_span(start, end, origin=origin, hint=hint)
    length = duration(path)
    if start >= length:
        problem = f"the clip starts at {start:g} s, at or past the end of '{path.name}' ({length:.1f} s long)"
        raise DataError(f"{origin}: {problem}; {hint}")
    return start, length if end is None else min(end, length)


class RestartingSession(Closeable):
    """A session that starts over every `every` seconds of stream (None: never), the protocol for
    models that cannot stream forever: each new one's previous text is the seed plus all the
    commentary so far. A `CommentarySession`, so it runs through the one pipeline."""

    def __init__(
        self,
        engine: StreamingEngine,
        *,
        instruction: str,
        previous_text: str,
        every: float | None = None,
        seed: int = 0,
    ) -> None:
        self.engine, self.instruction, self.previous_text = engine, instruction, previous_text
        self.every, self.seed = every, seed
        self.lines: list[Commentary] = []
        self._session = None
        self._segment_start = 0.0

    def push(self, frames, t_start: float, t_end: float) -> list[Commentary]:
        if self._session is not None and self.every and t_start >= self._segment_start + self.every - 1e-6:
            self._session.close()
            self._session = None
        if self._session is None:
            self._segment_start = t_start
            context = " ".join([self.previous_text, *(line.text for line in self.lines)]).strip()
            self._session = self.engine.start(
                instruction=self.instruction, previous_text=context, seed=self.seed
            )
        events = self._session.push(frames, t_start, t_end)
        self.lines += events
        return events

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


def commentate(
    engine: StreamingEngine,
    path: Path,
    start: float,
    end: float | None,
    *,
    instruction: str,
    previous_text: str,
    restart_every: float | None = None,
    seed: int = 0,
    origin: str = "start and end",
    hint: str = "pass a span inside the video",
) -> list[dict]:
    """Replies for [start, end) of `path` (end capped at the video's length; see `clip_span`)."""
    from core.pipeline import Pipeline

    start, end = clip_span(path, start, end, origin=origin, hint=hint)
    frames = frames_at(path, sample_times(start, end, fps=engine.stream.fps))
    with RestartingSession(
        engine, instruction=instruction, previous_text=previous_text, every=restart_every, seed=seed
    ) as session:
        for _ in Pipeline(frames, session, engine.stream, live=False).run():
            pass
    return [{"response": line.text, "start_time": line.start, "end_time": line.end} for line in session.lines]


def words_before(content: list, t: float) -> str:
    """The transcript words ([s, e, word] triples) that end by time t, joined by spaces."""
    return " ".join(str(w).strip() for s, e, w in content if e <= t + 1e-6 and str(w).strip())


def last_time(content: list) -> float:
    return max((float(e) for _, e, _ in content), default=-math.inf)
