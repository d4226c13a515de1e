"""Display orientation: a decoded frame turned upright, as players show it.

Phones store pictures as the sensor reads them and say in a display matrix how to show them;
`display_orientation` reads that (or the legacy `rotate` tag) and `displayed_rgb` applies it. They
are the one place this is done, for every reader of video in the project: the sources
(core/media/sources.py), the trainer's clip reader and the evals' frame reader.
"""

from __future__ import annotations

import math
import struct

import av
import numpy as np


def display_orientation(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> tuple[int, bool]:
    """How players turn this decoded frame for display: (quarter turns counter-clockwise, mirrored).

    A mirrored frame is flipped left-right before it is turned. Phones store pictures as the sensor
    reads them and say in a display matrix how to show them; FFmpeg attaches that matrix to every
    decoded frame, whether it came from the container (MP4/MOV, Matroska) or from an orientation
    message in the H.264/HEVC stream. The reading of the matrix is ffmpeg's and ffplay's
    (autorotate), mirrors included. Without a matrix, a legacy `rotate` stream tag (clockwise
    degrees, which old FFmpeg wrote and some muxers still keep) is honoured. Angles that are not
    right angles snap to the nearest quarter turn rather than tilting the picture.
    """
    matrix = _display_matrix(frame)
    if matrix is None:
        tag = next((v for k, v in stream.metadata.items() if k.lower() == "rotate"), "")
        try:
            clockwise = float(tag)
        except ValueError:  # absent, or not a number: nothing to honour
            return 0, False
        return (-round(clockwise / 90) % 4 if math.isfinite(clockwise) else 0), False
    # FFmpeg's layout: [a b u; c d v; x y w], a..d in 16.16 fixed point (the scale cancels out here).
    a, b, _, c, d = matrix[:5]
    if not (math.hypot(a, c) and math.hypot(b, d)):
        return 0, False  # a degenerate matrix says nothing sensible: show the frame as stored
    clockwise = math.degrees(math.atan2(b / math.hypot(b, d), a / math.hypot(a, c)))
    quarter = round(clockwise / 90) % 4
    if quarter == 1:
        return (1, True) if c > 0 else (3, False)  # transpose, or a quarter turn clockwise
    if quarter == 2:  # FFmpeg flips left-right where a < 0 and upside down where d < 0
        if a < 0 and d < 0:
            return 2, False  # both: a half turn
        return (0, True) if a < 0 else (2, True) if d < 0 else (0, False)
    if quarter == 3:
        return (3, True) if c < 0 else (1, False)  # the other diagonal, or a quarter turn counter-clockwise
    return (2, True) if d < 0 else (0, False)  # upside down (a quarter-0 matrix can only flip vertically)


def displayed_rgb(frame: av.VideoFrame, stream: av.video.stream.VideoStream) -> np.ndarray:
    """The frame's pixels as players show them: RGB [height, width, 3] uint8, turned upright."""
    rgb = frame.to_ndarray(format="rgb24")
    turns, mirrored = display_orientation(frame, stream)
    if not (turns or mirrored):
        return rgb
    if mirrored:
        rgb = rgb[:, ::-1]
    # A contiguous copy: torch.from_numpy, QImage and the recorder refuse negative strides.
    return np.ascontiguousarray(np.rot90(rgb, turns))


def _display_matrix(frame: av.VideoFrame) -> tuple[int, ...] | None:
    """The frame's display matrix (9 int32 in FFmpeg's layout), or None when it has none."""
    for data in frame.side_data:
        if getattr(data.type, "name", None) == "DISPLAYMATRIX":
            raw = bytes(data)
            return struct.unpack("=9i", raw[:36]) if len(raw) >= 36 else None
    return None
