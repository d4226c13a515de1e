"""The interface every voice meets: text in, float32 mono samples out."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Voice(Protocol):
    """A text-to-speech voice. `synthesize` may be slow (it runs on the speaker's thread, never the
    model's) and is called from one thread at a time."""

    name: str
    licence: str  # of the code and data this voice brings, for the README and the app's About
    sample_rate: int

    def synthesize(self, text: str) -> np.ndarray:
        """`text` spoken: float32 mono samples in [-1, 1] at `sample_rate` (empty for empty text)."""
        ...
