"""A run's state, log, counters and rates: plain Python, no Qt, so every rule here is tested without a GUI.

`RunState` is the one state machine of a run, and the window shows `label()` in one place:

    idle -> starting -> [loading model [-> downloading -> loading model]] -> preparing (the GPU or CPU)
         | connecting (a server) -> streaming
    streaming <-> reconnecting (a live source or a server dropped, and is being reopened)
    any running phase -> stopping (the user pressed Stop) -> stopped
    downloading -> stopping (Stop or the download's Cancel) -> download cancelled (the bytes kept)
    a running phase -> ended (the source ended: a file played to its end) | failed (with its reason)

A hub model not yet in the cache is downloaded first: the download's progress events (bytes done and
total, rate) move the run into, and along, the downloading phase; `download_text` says where it
stands in bytes, rate and time left.

Events arrive from the worker thread through queued signals, so one may come late (a "streaming"
after the user already pressed Stop): events that do not fit the current phase are ignored, never
let through. How a run ends is decided once, when the worker finishes: failed if a failure was
reported, stopped if the user asked, ended otherwise.

`RunLog` keeps the commentary of the run (the log's lines and what Export writes), the chunk and
frame counters and the rates, with the clock passed in, so the figures are tested to the digit. It
words the log's lines: commentary, the questions asked ('Q: ...') and their answers ('A: ...').
"""

from __future__ import annotations

import enum
import itertools
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from app.speech import speech_text
from core.download import DownloadProgress
from core.speech.speaker import SpeechStats
from core.types import Commentary, one_line

QUESTION_PREFIX = "Q: "  # how the log shows a question asked (its answer: core.types.ANSWER_PREFIX)


class Phase(enum.Enum):
    IDLE = "idle"
    STARTING = "starting"  # opening the source
    LOADING_MODEL = "loading model"  # finding its folder (a hub id: in the cache), then reading the weights
    DOWNLOADING = "downloading"  # a hub model's missing files, with progress (`RunState.download`)
    PREPARING = "preparing"  # building the engine on its device (the GPU's caches and graphs)
    CONNECTING = "connecting"  # to a remote server
    STREAMING = "streaming"
    RECONNECTING = "reconnecting"  # a live source or a server dropped; being reopened
    STOPPING = "stopping"  # Stop pressed, the chunk in progress finishing
    ENDED = "ended"  # the source ended by itself (a file played to its end)
    STOPPED = "stopped"  # the user stopped it
    CANCELLED = "download cancelled"  # the user stopped a download; its bytes are kept for the next Start
    FAILED = "failed"  # with a reason (`RunState.error`)


RUNNING = frozenset(
    {
        Phase.STARTING,
        Phase.LOADING_MODEL,
        Phase.DOWNLOADING,
        Phase.PREPARING,
        Phase.CONNECTING,
        Phase.STREAMING,
        Phase.RECONNECTING,
        Phase.STOPPING,
    }
)
FINAL = frozenset(
    {Phase.IDLE, Phase.ENDED, Phase.STOPPED, Phase.CANCELLED, Phase.FAILED}
)  # a new run may start

# The worker's progress: from which phases each one may be entered.
_PROGRESS = {
    # After a download: reading the weights; from itself: the voice's weights, then the model's.
    Phase.LOADING_MODEL: {Phase.STARTING, Phase.LOADING_MODEL, Phase.DOWNLOADING},
    Phase.DOWNLOADING: {Phase.STARTING, Phase.LOADING_MODEL, Phase.DOWNLOADING},  # see `downloaded`
    Phase.PREPARING: {Phase.STARTING, Phase.LOADING_MODEL},
    Phase.CONNECTING: {Phase.STARTING},
    # From itself: what runs changed (the engine switched from eager to its compiled modules).
    Phase.STREAMING: {
        Phase.STARTING,
        Phase.LOADING_MODEL,
        Phase.PREPARING,
        Phase.CONNECTING,
        Phase.STREAMING,
    },
}


@dataclass(frozen=True)
class ErrorReport:
    """What went wrong: one sentence for the window, and the details behind a toggle."""

    summary: str
    details: str = ""

    @classmethod
    def from_text(cls, text: str, details: str = "") -> ErrorReport:
        """The first sentence of `text` as the summary (as a sentence: a capital, a full stop); the whole
        text (if longer) and `details` below. Messages from core are phrases ('cannot open ...')."""
        text = re.sub(r"\s*[\n\r\t]\s*", " ", text).strip()  # one line; runs of spaces in a path kept
        first = first_sentence(text)
        # A capital for a word ('cannot ...'), never for a URL or a name ('ws://...', 'python3: ...').
        capital = re.match(r"[a-z]+(?![\w:/.\-])", first) is not None
        summary = (first[:1].upper() + first[1:] if capital else first) + (
            "" if first.endswith((".", "!", "?")) or not first else "."
        )
        rest = [part for part in (text if text != first else "", details.strip()) if part]
        return cls(summary, "\n\n".join(rest))


def first_sentence(text: str) -> str:
    """The text up to its first full stop that ends a sentence (not one inside a path or a number)."""
    match = re.search(r"[.!?](?=\s+[A-Z])", text)
    return text[: match.end()] if match else text


class RunState:
    """The phase of the current (or last) run, its details and its error."""

    def __init__(self) -> None:
        self.phase = Phase.IDLE
        self.detail = ""  # what the phase is about: the device, "file on cpu", a reconnect message
        self.error: ErrorReport | None = None
        self.remote = False
        self.download: DownloadProgress | None = None  # the latest progress of a download in this run
        self._streaming_detail = ""  # kept while reconnecting, shown again once reconnected
        self._resume: Phase | None = None  # the phase a reconnection returns to
        self._stop_asked = False
        self._cancelled = False  # the Stop came while downloading

    @property
    def running(self) -> bool:
        return self.phase in RUNNING

    @property
    def live(self) -> bool:
        """Whether the figures (rates, latency) describe what is happening now."""
        return self.phase in (Phase.STREAMING, Phase.RECONNECTING)

    def begin(self, *, remote: bool = False) -> None:
        """Start pressed (and the request was valid)."""
        if self.running:
            raise RuntimeError(f"a run is already {self.phase.value}")
        self.phase, self.detail, self.error, self.remote = Phase.STARTING, "", None, remote
        self._streaming_detail, self._resume, self._stop_asked = "", None, False
        self.download = None
        self._cancelled = False

    def refuse(self, error: ErrorReport) -> None:
        """Start refused before anything ran (a missing source, an unwritable folder): the phase stays."""
        self.error = error

    def clear_error(self) -> None:
        self.error = None

    def progress(self, phase: Phase, detail: str = "") -> bool:
        """The worker moved on (loading, preparing, connecting, streaming). False if it does not fit."""
        if self.phase not in _PROGRESS.get(phase, ()):
            return False
        self.phase, self.detail = phase, detail
        if phase is Phase.STREAMING:
            self._streaming_detail = detail
        return True

    def downloaded(self, event: DownloadProgress) -> bool:
        """A download's progress (from the worker, while it finds the voice and the model). False if it
        does not fit: one that comes after Stop (the download thread ends at its next block), or once
        that download's weights are being read, is ignored."""
        if (
            self.phase is Phase.LOADING_MODEL
            and self.download is not None
            and event.repo_id == self.download.repo_id
        ):
            return False  # back to loading after a download: that download is over (another may follow)
        if not self.progress(Phase.DOWNLOADING, event.repo_id):
            return False
        self.download = event
        return True

    def link(self, connected: bool, message: str) -> bool:
        """A live source or the server dropped (reconnecting) or answered again (connected)."""
        if not connected and self.phase in RUNNING - {Phase.STOPPING}:
            if self.phase is not Phase.RECONNECTING:
                self._resume = self.phase
            self.phase, self.detail = Phase.RECONNECTING, message
            return True
        if connected and self.phase is Phase.RECONNECTING:
            self.phase = self._resume or Phase.STREAMING
            self.detail = self._streaming_detail if self.phase is Phase.STREAMING else ""
            self._resume = None
            return True
        return False

    def stop(self) -> bool:
        """The user pressed Stop."""
        if not self.running or self.phase is Phase.STOPPING:
            return False
        self._stop_asked = True
        self._cancelled = self.phase is Phase.DOWNLOADING
        self.phase, self.detail = Phase.STOPPING, ""
        return True

    def fail(self, error: ErrorReport) -> bool:
        """The run failed (the worker is finishing). A failure after the user's Stop is not shown."""
        if not self.running or self._stop_asked:
            return False
        self.phase, self.detail, self.error = Phase.FAILED, "", error
        return True

    def finish(self) -> Phase:
        """The worker is done: failed (already set), stopped (asked for; a download cancelled if it was
        stopped while downloading) or ended (the source ended)."""
        if self.running:
            if self._stop_asked:
                self.phase = Phase.CANCELLED if self._cancelled else Phase.STOPPED
            else:
                self.phase = Phase.ENDED
            self.detail = ""
        return self.phase

    def label(self) -> str:
        """The one line the window shows for the state."""
        phase, detail = self.phase, self.detail
        if phase is Phase.IDLE:
            return "Idle: choose a source and press Start"
        if phase is Phase.STARTING:
            return "Starting: opening the source"
        if phase is Phase.LOADING_MODEL:
            return f"Loading weights: {detail}" if detail else "Loading weights"
        if phase is Phase.DOWNLOADING:
            return (
                f"Downloading weights {percent(self.download)}%" if self.download else "Downloading weights"
            )
        if phase is Phase.PREPARING:
            if detail.startswith(
                "cuda"
            ):  # compiling takes seconds there: the first chunks do not wait for it
                return "Preparing the GPU, commentary starts in eager mode"
            return f"Preparing the engine on {detail or 'its device'}"
        if phase is Phase.CONNECTING:
            return f"Connecting to {detail}".rstrip()
        if phase is Phase.STREAMING:
            return f"Streaming {detail}".rstrip()
        if phase is Phase.RECONNECTING:
            return f"Reconnecting: {detail}" if detail else "Reconnecting"
        if phase is Phase.STOPPING:
            return "Stopping after the chunk in progress"
        if phase is Phase.ENDED:
            return "Ended: the source played to its end"
        if phase is Phase.STOPPED:
            return "Stopped"
        if phase is Phase.CANCELLED:
            return "Download cancelled: the bytes so far are kept, and Start resumes it"
        return "Failed"  # the reason is in the window's error panel, said once


def percent(event: DownloadProgress) -> int:
    """How much of a download is done, in whole percent: 100 only once every byte is there."""
    return 100 if event.done >= event.total else event.done * 100 // max(event.total, 1)


def download_text(event: DownloadProgress) -> str:
    """'1.2 GB of 16.6 GB, 35.0 MB/s, 7 min left': bytes, rate and time left (once measured)."""
    from rich.filesize import decimal  # the same units as the command line's bar

    parts = [f"{decimal(event.done)} of {decimal(event.total)}"]
    if event.rate > 0:
        parts.append(f"{decimal(int(event.rate))}/s")
    left = event.seconds_left
    if left is not None and event.done < event.total:
        parts.append(f"{duration(left)} left")
    return ", ".join(parts)


def duration(seconds: float) -> str:
    """A time left, as precise as it is useful: '45 s', '7 min', '2 h 05 min' (never '0 s' for a
    moment that is still to come)."""
    seconds = max(1, math.ceil(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def recording_name(folder: Path | None = None) -> str:
    """The file a recording started now is written to (in the chosen folder); its .srt is beside it.
    With `folder`: a name no file there has yet, with or without its .srt (two recordings started in
    one second get -2, -3 ...; the second used to overwrite the first)."""
    stem = time.strftime("streamvlm-%Y%m%d-%H%M%S")
    if folder is None:
        return f"{stem}.mp4"
    for n in itertools.count(1):
        name = f"{stem}{f'-{n}' if n > 1 else ''}.mp4"
        if not any((folder / name).with_suffix(suffix).exists() for suffix in (".mp4", ".srt")):
            return name


@dataclass(frozen=True)
class Figures:
    """The status figures: rates, latency, and whether they describe the present."""

    rates: str = ""
    latency: str = ""
    speech: str = ""  # the speech lag and counters, when the run speaks
    live: bool = False


@dataclass
class RunLog:
    """The commentary, counters and rates of one run. `now` values are `time.monotonic()` seconds."""

    lines: list[Commentary] = field(default_factory=list)
    chunks: int = 0
    skipped: int = 0
    latency: float | None = None
    frames: int = 0  # frames captured so far (the source's count)
    speech: SpeechStats | None = None  # the speaker's latest counters and lag, when the run speaks
    _first_chunk_at: float | None = None
    _frames_at_first: int = 0
    _last_at: float | None = None

    def clear(self) -> None:
        self.__init__()

    def add(self, line: Commentary) -> str:
        """Keep a line of commentary; returns its log text, '[mm:ss.s - mm:ss.s] text' (an answer's text
        marked as one: 'A: ...', as the subtitles and the overlay mark it)."""
        self.lines.append(line)
        return f"[{clock(line.start)} - {clock(line.end)}] {line.marked}"

    @staticmethod
    def asked(question: str, t: float | None) -> str:
        """The log text of a question asked at stream time `t` (the picture shown; None before the
        first): '[mm:ss.s] Q: question', the question as the session asks it (one line)."""
        return f"[{'--:--.-' if t is None else clock(t)}] {QUESTION_PREFIX}{one_line(question)}"

    def extend(self, lines: Iterable[Commentary]) -> list[str]:
        return [self.add(line) for line in lines]

    def chunk(self, *, latency: float, skipped: int, frames: int, now: float) -> None:
        """A chunk was processed. Rates count from the first chunk (not from model loading)."""
        self.chunks += 1
        self.latency, self.skipped, self.frames, self._last_at = latency, skipped, frames, now
        if self.chunks == 1:
            self._first_chunk_at, self._frames_at_first = now, frames

    def figures(self, live: bool) -> Figures:
        """The rates and latency, from the first chunk to the last one."""
        if self.chunks == 0:
            return Figures(speech=speech_text(self.speech), live=live)
        elapsed = self._last_at - self._first_chunk_at
        if elapsed < 1.0:
            rates = "measuring"
        else:
            rates = (
                f"in {(self.frames - self._frames_at_first) / elapsed:.1f} FPS, "
                f"{(self.chunks - 1) / elapsed:.2f} chunks/s"
            )
        return Figures(
            f"{rates}, {self.skipped} skipped",
            f"latency {self.latency:.2f} s",
            speech_text(self.speech),
            live,
        )


def clock(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    return f"{int(minutes):02d}:{secs:04.1f}"
