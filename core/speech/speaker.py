"""The live pacing rule: commentary spoken as it comes, never more than one line behind.

A line is spoken as soon as it is produced. While one is being spoken, at most one newer line waits;
a still newer one replaces it (newest wins: the waiting line is dropped and counted), so speech is
at most one line behind the picture however slow the voice is. A silent second (no line, or an
empty one) is not spoken. Answers to the user's questions take a priority path: they queue apart
from the commentary, are never dropped, and each is spoken before any waiting commentary line. Each line is synthesized when its turn comes, on the speaker's own thread
(the model never waits for a voice), and its samples go to every output with the stream time its
first sample sounds; the speaker then holds the line for its duration before the next one starts.

`stats()` says how it is going: lines spoken, waiting (0 or 1) and dropped, and the speech lag:
how old the moment a line describes is when it begins to sound (from the start of its second to
its first sound). A line cannot be known before its second's last frame and the model's reply, so
a line spoken at once lags by about a second; one that waited for the line before it, by more.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from core.speech.clock import StreamClock
from core.speech.voice import Voice
from core.types import Closeable, Commentary

log = logging.getLogger(__name__)

# An output takes a spoken line's samples (float32 mono), their rate, and the stream time the first
# one sounds: a sound device, the speech WAV, a recording's audio track.
SpeechOutput = Callable[[np.ndarray, int, float], None]


@dataclass(frozen=True)
class SpeechStats:
    spoken: int  # lines spoken, being spoken or being synthesized
    waiting: int  # lines waiting for the one being spoken: 0 or 1 of commentary, and any answers
    dropped: int  # lines replaced by a newer one before their turn
    lag: float | None  # of the line spoken last: seconds from the start of its second to its first sound
    max_lag: float  # the largest lag so far

    def summary(self) -> str:
        lag = f"; speech lag {self.lag:.2f} s (max {self.max_lag:.2f} s)" if self.lag is not None else ""
        return f"speech: {self.spoken} lines spoken, {self.dropped} dropped (newer lines came first){lag}"


class Speaker(Closeable):
    """Speaks lines given to `say` (from any thread) with `voice`, to `outputs`, on `clock`."""

    def __init__(self, voice: Voice, outputs: Sequence[SpeechOutput], clock: StreamClock) -> None:
        self.voice, self.outputs, self.clock = voice, tuple(outputs), clock
        self._cond = threading.Condition()
        self._waiting: Commentary | None = None
        self._answers: deque[Commentary] = deque()  # answers are not newest-wins: a user waits for each
        self._spoken = self._dropped = 0
        self._lag: float | None = None
        self._max_lag = 0.0
        self._closing = False
        self._cut = threading.Event()  # stop now: the line being spoken is cut short
        self.error: BaseException | None = None  # what stopped the voice, raised by the next `say`
        self._thread = threading.Thread(target=self._speak, name="speech", daemon=True)
        self._thread.start()

    def say(self, line: Commentary) -> None:
        """A new line: spoken now if the speaker is idle, otherwise it waits, replacing any waiting line.
        An answer (`line.is_answer`) is never replaced: it waits in turn, ahead of the commentary."""
        if self.error is not None:
            raise self.error
        if not line.text.strip():
            return  # a silent second
        with self._cond:
            if self._closing:
                return
            if line.is_answer:
                self._answers.append(line)
                self._cond.notify()
                return
            if self._waiting is not None:
                self._dropped += 1
                log.debug(
                    "speech: dropped [%.1f, %.1f) for a newer line", self._waiting.start, self._waiting.end
                )
            self._waiting = line
            self._cond.notify()

    def stats(self) -> SpeechStats:
        with self._cond:
            waiting = int(self._waiting is not None) + len(self._answers)
            return SpeechStats(self._spoken, waiting, self._dropped, self._lag, self._max_lag)

    def close(self, *, finish: bool = True) -> None:
        """Stop taking lines. `finish`: speak the line being spoken and the waiting one to their end
        (a run that ended); otherwise stop at once (a run the user stopped). Closes the outputs that
        are Closeable (the device, the WAV), not the others (a recorder is its owner's)."""
        with self._cond:
            self._closing = True
            if not finish:
                self._waiting = None
                self._answers.clear()
                self._cut.set()
            self._cond.notify()
        self._thread.join()
        for output in self.outputs:
            if not finish and hasattr(output, "clear"):
                output.clear()  # a device cuts the line it is playing
            if isinstance(output, Closeable):
                output.close()
        if self.error is not None and finish:
            raise self.error

    def _speak(self) -> None:
        while True:
            with self._cond:
                while self._waiting is None and not self._answers and not self._closing:
                    self._cond.wait()
                if self._answers:
                    line = self._answers.popleft()
                else:
                    line, self._waiting = self._waiting, None
                if line is None or self._cut.is_set():
                    return
                self._spoken += 1  # its turn has come: it is no longer waiting, nor can it be dropped
            try:
                samples = self.voice.synthesize(line.text)
            except BaseException as exc:  # surfaces in the pipeline's thread at the next line
                self.error = exc
                return
            if len(samples) == 0:
                continue
            now = self.clock.now()
            start = now if now is not None else line.end
            with self._cond:
                self._lag = start - line.start
                self._max_lag = max(self._max_lag, self._lag)
            for output in self.outputs:
                output(samples, self.voice.sample_rate, start)
            # The line sounds for its duration; the next one starts after it (or when cut).
            self._cut.wait(len(samples) / self.voice.sample_rate)
