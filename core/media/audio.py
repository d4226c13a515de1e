"""Sound input for recordings: the input devices PortAudio sees (through sounddevice), and a
capture that stamps each block with the monotonic time of its first sample, so the recorder can
place it on the video's stream clock."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.errors import StreamVLMError

log = logging.getLogger(__name__)
BlockCallback = Callable[[np.ndarray, float], None]  # (samples float32 [n, channels], monotonic time)


@dataclass(frozen=True)
class AudioDevice:
    index: int
    name: str
    channels: int
    samplerate: int


def input_devices(rescan: bool = False) -> tuple[list[AudioDevice], str | None]:
    """The input devices that open, and when there are none, why (one sentence for the person choosing).

    PortAudio reads the device list once; `rescan` reads it again (no stream may be open then).
    """
    try:
        import sounddevice as sd
    except ImportError:
        return [], "audio needs the sounddevice package: pip install 'streamvlm[gui]'"
    except OSError as exc:
        return [], f"sounddevice could not load PortAudio ({exc}); install libportaudio2"
    try:
        if rescan:
            sd._terminate()  # sounddevice's documented way to make PortAudio look again
            sd._initialize()
        devices = sd.query_devices()
    except Exception as exc:  # PortAudio reports host-API trouble as plain exceptions
        return [], f"PortAudio could not list the sound devices ({exc})"
    listed = [
        AudioDevice(i, d["name"], int(d["max_input_channels"]), int(d["default_samplerate"]))
        for i, d in enumerate(devices)
        if d["max_input_channels"] > 0
    ]
    # PortAudio lists what its host APIs are configured for (ALSA's "pulse" even with no sound
    # server running); only a device that accepts a mono 48 kHz stream is offered.
    found = [device for device in listed if _opens(sd, device)]
    if found:
        return found, None
    if listed:
        return (
            [],
            f"none of the {len(listed)} audio inputs PortAudio lists can be opened (is a sound server running?)",
        )
    return [], "no audio input device was found (PortAudio lists none)"


def _opens(sd, device: AudioDevice) -> bool:
    try:
        sd.check_input_settings(device=device.index, channels=1, dtype="float32", samplerate=48_000)
    except Exception:  # sounddevice raises PortAudioError or ValueError
        return False
    return True


class AudioCapture:
    """Blocks of float32 samples from one input device, each with the monotonic time it began."""

    def __init__(
        self, device: int | None, on_block: BlockCallback, *, samplerate: int = 48_000, channels: int = 1
    ):
        import sounddevice as sd

        self.samplerate, self.channels = samplerate, channels
        self.on_block = on_block
        try:
            self._stream = sd.InputStream(
                device=device,
                samplerate=samplerate,
                channels=channels,
                dtype="float32",
                callback=self._callback,
            )
        except Exception as exc:
            raise StreamVLMError(
                f"audio input {device} could not be opened ({exc}); choose another device"
            ) from None

    def _callback(self, samples: np.ndarray, frames: int, time_info, status) -> None:
        if status:
            log.debug("audio input: %s", status)
        self.on_block(samples.copy(), time.monotonic() - frames / self.samplerate)

    def start(self) -> None:
        self._stream.start()

    def close(self) -> None:
        self._stream.stop()
        self._stream.close()
