"""Frames of a benchmark video at chosen times: the sampling every benchmark shares.

A benchmark asks for the picture on screen at given stream times (a rate over a span, or a
fixed number spread over a clip). `frames_at` seeks once to the first time and decodes forward,
yielding for each time the latest decoded frame whose presentation time is at or before it, as
core.media.sources does for live streams; times are absolute seconds of the file. `sample_times`
turns a benchmark's rule (fps, a frame cap, or a frame count) into those times. Frames come out
upright, as players show them (core.media.orientation.displayed_rgb honours rotation metadata).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import av
import numpy as np

from core.errors import SourceError
from core.media.orientation import displayed_rgb
from core.types import Frame

_EPS = 1e-6


def duration(path: Path) -> float:
    """Seconds of video in the file (from the container, else by decoding)."""
    with _open(path) as container:
        stream = container.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        if container.duration is not None:
            return container.duration / av.time_base
        last = 0.0
        for frame in container.decode(stream):
            if frame.time is not None:
                last = frame.time
        return last


def sample_times(
    start: float,
    end: float,
    *,
    fps: float | None = None,
    max_frames: int | None = None,
    count: int | None = None,
) -> list[float]:
    """Times in [start, end): `fps` per second (spread evenly over the span when that exceeds
    `max_frames`), or `count` evenly spread (each at the middle of its share of the span)."""
    span = end - start
    if span <= 0:
        raise SourceError(f"a clip must end after it starts (got {start:.2f} to {end:.2f} s)")
    if count is None:
        if not fps or fps <= 0:
            raise ValueError("give fps or count")
        count = max(1, math.floor(span * fps + _EPS))
        if max_frames is None or count <= max_frames:
            return [start + k / fps for k in range(count)]
        count = max_frames
    return [start + (k + 0.5) * span / count for k in range(count)]


def frames_at(path: Path, times: Sequence[float]) -> Iterator[Frame]:
    """For each time (non-decreasing), the frame on screen then; times past the end get the last frame."""
    if not times:
        return
    with _open(path) as container:
        stream = container.streams.video[0]
        origin = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        if times[0] > 1.0 and stream.time_base is not None:
            # Seek to the keyframe before the first time; decoding forward from there is exact.
            container.seek(int((times[0] + origin) / stream.time_base), stream=stream, backward=True)
        i = 0
        shown: np.ndarray | None = None
        for frame in container.decode(stream):
            t = (frame.time if frame.time is not None else 0.0) - origin
            while i < len(times) and times[i] < t - _EPS:
                if shown is None:  # the seek landed after this time: the first frame stands in
                    shown = displayed_rgb(frame, stream)
                yield Frame(shown, times[i])
                i += 1
            if i == len(times):
                return
            shown = displayed_rgb(frame, stream)
        if shown is None:
            raise SourceError(f"'{path}' has a video stream but no frame could be decoded")
        for t in times[i:]:
            yield Frame(shown, t)


def jpeg_base64(rgb: np.ndarray, height: int = 360, quality: int = 90) -> str:
    """A frame resized to `height` pixels high (aspect kept) as base64 JPEG, for image_url parts."""
    from PIL import Image

    image = Image.fromarray(rgb)
    if image.height != height:
        image = image.resize((max(1, round(image.width * height / image.height)), height), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return base64.b64encode(buffer.getvalue()).decode()


def _open(path: Path):
    if not path.is_file():
        raise SourceError(f"video '{path}' does not exist; check the dataset folder (--data)")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise SourceError(f"'{path}' could not be opened as a video ({exc}); the file is damaged") from None
    if not container.streams.video:
        container.close()
        raise SourceError(f"'{path}' has no video stream")
    return container
