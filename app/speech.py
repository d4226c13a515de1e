"""The app's speech controls without Qt: the voices and output devices offered, the choice a run is
started with (checked at Start), the device kept in the settings by name, and the status bar's text
of how speech is keeping up.

The pacing rule, the counters and the lag are core's (`core.speech.speaker`, docs/speech.md); this
module only says them. What a run speaks with is fixed at Start (the voice is loaded and the device
opened once); the volume is the device's level and changes while it plays. The recording and its
audio track carry speech at full level, whatever the volume heard here.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import ConfigError
from core.speech.output import OutputDevice
from core.speech.speaker import SpeechStats
from core.speech.voices import VOICES, check_voice, default_voice

DEFAULT_DEVICE = "System default"  # the device list's first entry: whatever the system plays on
DEFAULT_VOLUME = 80  # percent: a voice at full scale is loud next to most desktop sound


@dataclass(frozen=True)
class SpeechRequest:
    """What Start speaks with."""

    voice: str  # a name in core.speech.voices.VOICES
    device: int | None  # a PortAudio output index; None: the system's default output
    device_name: str  # as the list shows it, for the error a device that does not open gives
    volume: float  # 0..1, of the sound device only


@dataclass(frozen=True)
class VoiceChoice:
    name: str
    label: str  # what the list shows
    about: str  # its description and licence (the tooltip)
    problem: str | None  # why it cannot speak here (what to install), or None


def voice_choices() -> list[VoiceChoice]:
    """Every voice, with why it cannot be used here where it cannot (the list offers it greyed)."""
    choices = []
    for info in VOICES.values():
        product, _, what = info.description.partition(": ")
        choices.append(
            VoiceChoice(info.name, f"{product} ({info.name})", f"{what}; {info.licence}", info.problem())
        )
    return choices


def initial_voice(saved: str, choices: list[VoiceChoice]) -> str:
    """The saved voice where it is still usable, else the default one (the neural voice if installed)."""
    usable = {choice.name for choice in choices if choice.problem is None}
    return saved if saved in usable else default_voice()


def device_choices(devices: list[OutputDevice], default: int | None) -> list[tuple[str, int | None]]:
    """(label, device index) for the device list: the system's default output first (when there is
    one), then each output that opens. Empty when speech cannot be heard here."""
    choices: list[tuple[str, int | None]] = (
        [(DEFAULT_DEVICE, None)] if devices and default is not None else []
    )
    return choices + [(device.name, device.index) for device in devices]


def initial_device(saved: str, choices: list[tuple[str, int | None]]) -> int:
    """The row of the device chosen last time, found by its name (PortAudio's indexes change when a
    device comes or goes), else the first row (the system's default)."""
    labels = [label for label, _ in choices]
    return labels.index(saved) if saved in labels else 0


def speech_problem(voice: str, device: int | None, default: int | None) -> str | None:
    """Why Start cannot speak with `voice` on `device` (None: the default output), in one phrase, or None."""
    try:
        check_voice(voice)
    except ConfigError as exc:
        return f"{exc}, or choose another voice"
    if device is None and default is None:
        return "this system has no default sound output; choose an output for speech"
    return None


def device_failure(name: str) -> str:
    """The sentence of an output device that would not open when the run started."""
    return (
        f"the sound output '{name}' could not be opened; choose another output for speech, or turn Speak off"
    )


def speech_text(stats: SpeechStats | None) -> str:
    """The status bar's speech field: '' without speech; the lag of the line heard last (how old its
    moment was when it began to sound) and the largest, and the lines waiting and dropped."""
    if stats is None:
        return ""
    counts = f"{stats.waiting} waiting, {stats.dropped} dropped"
    if stats.lag is None:
        return f"speech: nothing heard yet, {counts}"
    return f"speech lag {stats.lag:.1f} s (max {stats.max_lag:.1f} s), {counts}"


SPEECH_TIP = (
    "Speech lag: from the start of the second a line describes to its first sound. Waiting: a newer "
    "line waits while one is spoken (at most one of commentary, and any answers to questions, which "
    "are spoken first and never dropped). Dropped: lines of commentary replaced by a newer one before "
    "their turn, so speech never falls more than a line behind the picture."
)
