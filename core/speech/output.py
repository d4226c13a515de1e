"""Speech to a sound output device through sounddevice (PortAudio).

`DeviceOutput` keeps one output stream open for the run and plays what it is given from PortAudio's
callback (silence in between), at the device's own rate, so no device is asked for a rate it may
refuse. `output_devices` lists the devices that accept it, for the CLI's checks and the app's menu.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from core.errors import StreamVLMError
from core.speech.samples import resample
from core.types import Closeable

NO_SOUNDDEVICE = "speech to a device needs the sounddevice package and PortAudio: pip install sounddevice, apt-get install libportaudio2"


@dataclass(frozen=True)
class OutputDevice:
    index: int
    name: str
    samplerate: int


def output_devices() -> tuple[list[OutputDevice], str | None]:
    """The output devices that open for mono float32 at their own rate, and when there are none, why
    (one sentence for the person choosing)."""
    try:
        import sounddevice as sd
    except (ImportError, OSError):
        return [], NO_SOUNDDEVICE
    try:
        devices = sd.query_devices()
    except Exception as exc:  # PortAudio reports host-API trouble as plain exceptions
        return [], f"PortAudio could not list the sound devices ({exc})"
    listed = [
        OutputDevice(i, d["name"], int(d["default_samplerate"]))
        for i, d in enumerate(devices)
        if d["max_output_channels"] > 0
    ]
    found = [d for d in listed if _opens(sd, d)]
    if found:
        return found, None
    if listed:
        return (
            [],
            f"none of the {len(listed)} sound outputs PortAudio lists can be opened (is a sound server running?)",
        )
    return [], "no sound output device was found (PortAudio lists none)"


def default_output() -> int | None:
    """The index of PortAudio's default output device, or None where it has none."""
    try:
        import sounddevice as sd

        index = sd.default.device[1]
    except Exception:
        return None
    return index if isinstance(index, int) and index >= 0 else None


def _opens(sd, device: OutputDevice) -> bool:
    try:
        sd.check_output_settings(
            device=device.index, channels=1, dtype="float32", samplerate=device.samplerate
        )
    except Exception:  # sounddevice raises PortAudioError or ValueError
        return False
    return True


class DeviceOutput(Closeable):
    """Plays spoken lines on output `device` (an index of `output_devices`, None: the default one)."""

    def __init__(self, device: int | None = None, *, volume: float = 1.0) -> None:
        try:
            import sounddevice as sd
        except (ImportError, OSError):
            raise StreamVLMError(NO_SOUNDDEVICE) from None
        self.volume = volume  # 0..1, read at every block: the app's slider changes it while playing
        self._queue: deque[np.ndarray] = deque()
        self._lock = threading.Lock()
        self._empty = threading.Event()  # nothing queued: all handed to PortAudio
        self._empty.set()
        try:
            info = sd.query_devices(device, "output")
            self.rate = int(info["default_samplerate"])
            self._stream = sd.OutputStream(
                device=device, samplerate=self.rate, channels=1, dtype="float32", callback=self._callback
            )
            self._stream.start()
        except Exception as exc:
            which = "the default sound output" if device is None else f"sound output {device}"
            raise StreamVLMError(f"{which} could not be opened ({exc}); choose another device") from None

    def __call__(self, samples: np.ndarray, rate: int, t: float) -> None:
        """Play `samples` after what is already playing (the speaker starts a line when the last ended)."""
        block = resample(samples, rate, self.rate)
        with self._lock:
            self._queue.append(block)
            self._empty.clear()

    def clear(self) -> None:
        """Stop what is playing now."""
        with self._lock:
            self._queue.clear()
            self._empty.set()

    def _callback(self, out: np.ndarray, frames: int, time_info, status) -> None:
        filled = 0
        with self._lock:
            while filled < frames and self._queue:
                head = self._queue[0]
                n = min(frames - filled, len(head))
                out[filled : filled + n, 0] = head[:n]
                filled += n
                if n == len(head):
                    self._queue.popleft()
                else:
                    self._queue[0] = head[n:]
            if not self._queue:
                self._empty.set()
        out[filled:] = 0
        if self.volume != 1.0:
            out *= self.volume

    def close(self) -> None:
        """Stop after what is queued has played (a line still in the device's pipeline is heard
        to its end; `clear` first to cut it)."""
        stream, self._stream = getattr(self, "_stream", None), None
        if stream is not None:
            with self._lock:
                queued = sum(len(block) for block in self._queue) / self.rate
            self._empty.wait(queued + 1.0)  # the callback takes the rest from the queue
            stream.stop()  # and PortAudio plays what it holds, then stops
            stream.close()
