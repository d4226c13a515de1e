"""Commentary of one video span through the streaming engine, as the comparative benchmarks need it.

`commentate` samples the file at the engine's FPS from `start` to `end` (absolute seconds, so
time labels match the video), groups the frames into 1-second chunks and pushes them through a
session, returning every reply as `{response, start_time, end_time}`. With `restart_every`, a new
session starts every that many seconds (the protocol for models that cannot stream forever); the
new session's previous text is the seed plus the commentary generated so far, never ground truth
from after `start`.
"""

from __future__ import annotations

import math
from pathlib import Path

from core.engine import StreamingEngine
from core.sampler import chunks
from evals.video import duration, frames_at, sample_times


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
) -> list[dict]:
    """Replies for [start, end) of `path` (end capped at the video's length)."""
    end = min(end, duration(path)) if end is not None else duration(path)
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
