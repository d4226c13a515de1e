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

from core.media.chunker import chunks
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
    start, end = clip_span(path, start, end, origin=origin, hint=hint)
    times = sample_times(start, end, fps=engine.stream.fps)
    items: list[dict] = []
    session = None
    segment_start = start
    try:
        for chunk in chunks(frames_at(path, times), engine.stream):
            if (
                session is not None
                and restart_every
                and chunk.t_start >= segment_start + restart_every - 1e-6
            ):
                session.close()
                session = None
            if session is None:
                segment_start = chunk.t_start
                context = " ".join([previous_text, *(item["response"] for item in items)]).strip()
                session = engine.start(instruction=instruction, previous_text=context, seed=seed)
            for line in session.push(chunk.frames, chunk.t_start, chunk.t_end):
                items.append({"response": line.text, "start_time": line.start, "end_time": line.end})
    finally:
        if session is not None:
            session.close()
    return items


def words_before(content: list, t: float) -> str:
    """The transcript words ([s, e, word] triples) that end by time t, joined by spaces."""
    return " ".join(str(w).strip() for s, e, w in content if e <= t + 1e-6 and str(w).strip())


def last_time(content: list) -> float:
    return max((float(e) for _, e, _ in content), default=-math.inf)
