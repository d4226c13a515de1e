"""The two values that flow through streamvlm: frames in, commentary out."""

from __future__ import annotations

from dataclasses import dataclass

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
