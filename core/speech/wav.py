"""`--speech-wav`: exactly what was spoken, each line at the stream time it began, silence between."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from core.errors import StreamVLMError
from core.speech.samples import resample, to_pcm16
from core.types import Closeable


class SpeechWav(Closeable):
    """A mono 16-bit WAV whose sample `round(t * rate)` is stream time `t`. The header is rewritten
    after every line (Python's `wave` does so), so a killed run leaves a file players open."""

    def __init__(self, path: str | Path, rate: int) -> None:
        self.path, self.rate = Path(path), rate
        try:
            # Opened here, not by `wave.open(path)`: a Wave_write whose open failed is left half-made, and
            # its finaliser then prints an AttributeError after the one-line error.
            self._file = open(self.path, "wb")  # noqa: SIM115 (owned until close)
        except OSError as exc:
            raise StreamVLMError(f"cannot write the speech to '{self.path}' ({exc.strerror})") from None
        self._wav = wave.open(self._file, "wb")
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(rate)
        self.written = 0  # samples in the file

    def __call__(self, samples: np.ndarray, rate: int, t: float) -> None:
        """A spoken line whose first sample sounded at stream time `t`. A line that starts before the
        end of the previous one (clock jitter of a few milliseconds) loses its overlap."""
        if self._wav is None:
            return
        samples = resample(samples, rate, self.rate)
        start = max(0, round(t * self.rate))
        if start < self.written:
            samples = samples[self.written - start :]
            start = self.written
        silence = np.zeros(start - self.written, np.float32)
        block = np.concatenate([silence, samples])
        self._wav.writeframes(to_pcm16(block))
        self.written += len(block)

    def close(self) -> None:
        if self._wav is not None:
            try:
                self._wav.close()  # writes the final header; leaves the file it was given open
            finally:
                self._wav = None
                self._file.close()
