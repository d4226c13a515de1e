"""The voices by name: what each needs and brings, checked without loading anything.

    check_voice("espeak")           # ConfigError saying what to install, before a model loads
    voice = open_voice("pocket", progress=show)

Only the standard library is imported until a voice is opened, so the command line checks `--voice`
in milliseconds. A voice is added by writing its module (it meets `core.speech.voice.Voice`) and
one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from core.errors import ConfigError


@dataclass(frozen=True)
class VoiceInfo:
    name: str
    description: str
    licence: str
    problem: Callable[[], str | None]  # why it cannot be opened here (what to install), or None


def _espeak_problem() -> str | None:
    from core.speech.espeak import INSTALL, espeak_program

    return None if espeak_program() else f"the espeak voice needs the espeak-ng program: {INSTALL}"


def _pocket_problem() -> str | None:
    from core.speech.pocket import INSTALL, installed

    return None if installed() else f"the pocket voice needs the pocket-tts package: {INSTALL}"


VOICES: dict[str, VoiceInfo] = {
    "pocket": VoiceInfo(
        "pocket",
        "Kyutai Pocket TTS: neural, natural (its weights are downloaded on first use)",
        "MIT code, CC-BY-4.0 weights",
        _pocket_problem,
    ),
    "espeak": VoiceInfo(
        "espeak",
        "eSpeak NG: robotic, instant, offline",
        "GPL-3.0 (run as a separate program)",
        _espeak_problem,
    ),
}


def voice_names() -> list[str]:
    return list(VOICES)


def default_voice() -> str:
    """The neural voice where its package is installed, else espeak."""
    return "pocket" if VOICES["pocket"].problem() is None else "espeak"


def check_voice(name: str) -> VoiceInfo:
    """The voice `name`, or ConfigError: an unknown name lists the voices, a missing part says what to install."""
    info = VOICES.get(name)
    if info is None:
        raise ConfigError(f"there is no voice '{name}'; the voices are: {', '.join(VOICES)}")
    problem = info.problem()
    if problem:
        raise ConfigError(problem)
    return info


def open_voice(name: str, *, progress=None, cancel=None):
    """Voice `name` ready to speak (the pocket voice fetches its weights first, reporting `progress`)."""
    check_voice(name)
    if name == "espeak":
        from core.speech.espeak import EspeakVoice

        return EspeakVoice()
    from core.speech.pocket import PocketVoice

    return PocketVoice.load(progress=progress, cancel=cancel)
