"""Speech samples are float32 mono numpy arrays at a voice's rate; this module converts them."""

from __future__ import annotations

import io
import wave

import numpy as np


def resample(samples: np.ndarray, rate: int, to_rate: int) -> np.ndarray:
    """`samples` (float32 mono at `rate`) at `to_rate`, by FFmpeg's resampler (PyAV)."""
    samples = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
    if rate == to_rate or len(samples) == 0:
        return samples
    import av

    frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=to_rate)
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]  # what the filter holds back
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def from_wav(data: bytes) -> tuple[np.ndarray, int]:
    """The samples (float32 mono) and rate of a 16-bit PCM WAV, even one whose header gives no length
    (a program writing to a pipe, as espeak-ng does, cannot know it)."""
    with wave.open(io.BytesIO(data)) as wav:
        rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
        if width != 2:
            raise ValueError(f"expected 16-bit samples, got {8 * width}-bit")
        raw = wav.readframes(wav.getnframes())  # a header's impossible length reads what is there
    raw = raw[: len(raw) - len(raw) % (2 * channels)]
    pcm = np.frombuffer(raw, "<i2").reshape(-1, channels).mean(axis=1)
    return (pcm / 32768.0).astype(np.float32), rate


def to_pcm16(samples: np.ndarray) -> bytes:
    """float32 samples as 16-bit little-endian PCM, clipped to full scale."""
    return (np.clip(samples, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()
