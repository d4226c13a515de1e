"""eSpeak NG: the voice that is always there offline, robotic but instant.

eSpeak NG is GPL-3.0, so it runs as a program (Debian's `espeak-ng` package), never as a library in
our process: each line is one `espeak-ng --stdout` run writing a WAV to a pipe (about 20 ms for a
line on one core), the text given on standard input so no text is read as an option.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np

from core.errors import StreamVLMError
from core.speech.samples import from_wav

PROGRAM = "espeak-ng"
INSTALL = "apt-get install espeak-ng"
LICENCE = "GPL-3.0-or-later (eSpeak NG, run as a separate program)"
WORDS_PER_MINUTE = 175  # espeak-ng's own default


def espeak_program() -> str | None:
    """The path of espeak-ng, or None where it is not installed."""
    return shutil.which(PROGRAM)


class EspeakVoice:
    """eSpeak NG speaking `language` (an espeak-ng voice: en-us, en-gb, fr, ...) at `rate` words a minute."""

    name = "espeak"
    licence = LICENCE

    def __init__(self, language: str = "en-us", rate: int = WORDS_PER_MINUTE) -> None:
        program = espeak_program()
        if program is None:
            raise StreamVLMError(f"the espeak voice needs the espeak-ng program: {INSTALL}")
        if not 80 <= rate <= 450:  # espeak-ng's own limits
            raise ValueError(f"espeak-ng speaks 80 to 450 words a minute (got {rate})")
        self.program, self.language, self.rate = program, language, rate
        self.sample_rate = self._run("a")[1]  # espeak-ng's rate (22050 Hz), and the language works

    def synthesize(self, text: str) -> np.ndarray:
        if not text.strip():
            return np.zeros(0, np.float32)
        samples, _ = self._run(text)
        return samples

    def _run(self, text: str) -> tuple[np.ndarray, int]:
        command = [self.program, "--stdout", "-v", self.language, "-s", str(self.rate)]
        try:
            done = subprocess.run(command, input=text.encode(), capture_output=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise StreamVLMError(f"espeak-ng could not run ({exc})") from None
        if done.returncode != 0 or not done.stdout:
            reason = done.stderr.decode(errors="replace").strip() or f"exit status {done.returncode}"
            raise StreamVLMError(f"espeak-ng failed ({reason}); check the voice '{self.language}'")
        return from_wav(done.stdout)
