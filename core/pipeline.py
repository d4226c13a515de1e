"""The one pipeline: a source's frames, in one-second chunks, through a session, out to the sinks.

    source -> (recorder, frame callback) -> chunks -> session (local or remote) -> recorder, sinks

Speech is one more sink: `open_speaker` builds a `core.speech.Speaker` whose `say` is passed with
the other sinks, on the pipeline's `clock` (stream time, set by the first frame), so its WAV and a
recording's audio track place each spoken line where the picture is.

`Pipeline` is what the CLI (`python -m core run`), the app's worker and the benchmarks run; each
adds only its presentation (a progress bar, Qt signals, result rows). A file is processed as fast
as the model goes, every chunk in order; a live source (or a file paced like one) goes through
`core.media.realtime.RealtimeRunner`, which skips chunks that would come later than the latency
budget. The recording keeps the source's own frame rate (`open_recording`), while the model
sees `stream.fps` frames a second picked from it by the chunker.

Questions are one more input: `Pipeline.ask(text)` (from any thread: a typed line, the app's
question box) hands a question to the session, which asks it in its next chunk; `questions`
are scripted ones, each asked in the first chunk that reaches its stream time. Answers come back
as commentary lines marked as answers (`Commentary.question`) and go to the same sinks.

This module and core/__main__.py are the assembly points that may import the engine and both wings.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from core.chunk_guard import GuardedSession
from core.config import StreamConfig
from core.errors import StreamVLMError
from core.media.chunker import chunks
from core.media.realtime import ChunkReport, RealtimeRunner, tee
from core.media.recorder import Recorder, recording_fps
from core.speech.clock import StreamClock
from core.speech.speaker import Speaker, SpeechOutput
from core.speech.voice import Voice
from core.types import Closeable, Commentary, CommentarySession, Frame

log = logging.getLogger(__name__)

Sink = Callable[[Commentary], None]
ScriptedQuestion = tuple[float, str]  # (stream seconds, question)


class ScriptedQuestions(Closeable):
    """A session whose scripted questions are asked on time: before each chunk, every question whose time
    the chunk reaches (time <= its end; the trainer asks one in the chunk whose (start, end] holds it)
    goes to the session, which asks one a chunk, in order. A question whose chunk was skipped goes
    with the next chunk that runs."""

    def __init__(self, session: CommentarySession, questions: Iterable[ScriptedQuestion]) -> None:
        self.session = session
        self._script = deque(sorted(questions, key=lambda q: q[0]))

    def push(self, frames, t_start: float, t_end: float) -> list[Commentary]:
        while self._script and self._script[0][0] <= t_end:
            ask_session(self.session, self._script.popleft()[1])
        return self.session.push(frames, t_start, t_end)

    def close(self) -> None:
        self.session.close()


def ask_session(session: CommentarySession, text: str) -> None:
    """Ask `session` a question (its next chunk asks it); StreamVLMError for a session that takes none."""
    ask = getattr(session, "ask", None)
    if ask is None:
        raise StreamVLMError(f"this session ({type(session).__name__}) takes no questions")
    ask(text)


def open_recording(
    path: str | Path,
    source,
    stream: StreamConfig,
    *,
    fps: float | None = None,
    audio_rate: int | None = None,
    speech: bool = False,
) -> Recorder:
    """A recorder for `source` at `fps` (default: the source's own rate, `recording_fps`), with the
    source set to deliver frames at that rate (the chunker still hands the model `stream.fps`).
    `audio_rate`: captured sound comes (`write_audio`); `speech`: spoken lines come (`add_speech`)."""
    fps = fps or recording_fps(stream.fps, getattr(source, "native_fps", None))
    source.fps = fps  # sources sample at `fps` when iterated
    recorder = Recorder(path, fps, audio_rate=audio_rate, speech=speech)
    log.info("recording to %s (%s, %g FPS) and %s", path, recorder.codec, fps, recorder.subtitles.path)
    return recorder


def open_speaker(
    voice: Voice,
    clock: StreamClock,
    *,
    device: int | None = None,
    audible: bool = True,
    wav: str | Path | None = None,
    recorder: Recorder | None = None,
) -> Speaker:
    """A speaker of `voice` on `clock`, heard on output `device` (None: the default one) when
    `audible`, written to the `wav` file and to the `recorder`'s audio track when given."""
    from core.speech.output import DeviceOutput
    from core.speech.wav import SpeechWav

    outputs: list[SpeechOutput] = []
    try:
        if audible:
            outputs.append(DeviceOutput(device))
        if wav is not None:
            outputs.append(SpeechWav(wav, voice.sample_rate))
    except BaseException:
        for output in outputs:
            output.close()
        raise
    if recorder is not None:
        outputs.append(recorder.add_speech)
    return Speaker(voice, outputs, clock)


class LatencyTally:
    """The capture-to-commentary latencies of a run that may never end, in bounded memory: a count per
    10 ms (the precision `Pipeline.summary` prints), so the median and the maximum stay what a list of
    every chunk's latency would give at that precision, while the memory does not grow with the stream
    (a list grew 2.7 MiB a day of one-second chunks: docs/reliability.md, the 24-hour soak)."""

    def __init__(self) -> None:
        self.count = 0
        self.max = 0.0
        self._per_10ms: Counter[int] = Counter()

    def add(self, seconds: float) -> None:
        self.count += 1
        self.max = max(self.max, seconds)
        self._per_10ms[round(seconds * 100)] += 1

    def median(self) -> float:
        """The median to 10 ms (of two middle values, their mean, as `statistics.median`)."""
        if not self.count:
            raise ValueError("no latencies yet")
        middle = [(self.count - 1) // 2, self.count // 2]  # the ranks the median is made of
        values, seen = [], 0
        for hundredths in sorted(self._per_10ms):
            seen += self._per_10ms[hundredths]
            while middle and middle[0] < seen:
                values.append(hundredths / 100)
                middle.pop(0)
            if not middle:
                break
        return sum(values) / 2


class Pipeline(Closeable):
    """One stream's run. `run()` yields a `ChunkReport` per processed chunk; `stop()` ends it from any
    thread; `summary()` says what happened. Closing the pipeline closes the source (not the session,
    the recorder or the sinks, which belong to the caller)."""

    def __init__(
        self,
        source: Iterable[Frame],
        session: CommentarySession,
        stream: StreamConfig,
        *,
        live: bool,
        budget: float = 2.0,
        duration: float | None = None,
        recorder: Recorder | None = None,
        sinks: Sequence[Sink] = (),
        on_frame: Callable[[Frame], None] | None = None,
        clock: StreamClock | None = None,
        questions: Sequence[ScriptedQuestion] = (),
    ) -> None:
        """`live`: pace by the latency `budget` (a live source, or a file paced like one); otherwise
        every chunk is processed in turn. `duration`: stop after this much stream time. `recorder`
        gets every frame and every line; `sinks` every line; `on_frame` every frame (capture thread).
        `clock` is started by the first frame (a speaker shares it). `questions`: (time, text) pairs,
        each asked in the first chunk that reaches its time."""
        self.source, self.session, self.stream = source, session, stream
        # What chunks are pushed to: the session, asking the scripted questions on time, a chunk that runs
        # out of GPU memory failing alone (one error line; the run goes on with the next chunk).
        self._pushed = GuardedSession(ScriptedQuestions(session, questions) if questions else session)
        self.live, self.budget = live, budget
        self.end = duration if duration is not None else float("inf")
        self.recorder, self.sinks, self.on_frame = recorder, tuple(sinks), on_frame
        self.clock = clock or StreamClock()
        self.latency = LatencyTally()
        self.skipped = 0
        self._runner: RealtimeRunner | None = None
        self._stopped = threading.Event()

    def run(self) -> Iterator[ChunkReport]:
        try:
            reports = self._live() if self.live else self._file()
            for report in reports:
                for line in report.commentary:
                    if self.recorder is not None:
                        self.recorder.add(line)
                    for sink in self.sinks:
                        sink(line)
                self.latency.add(report.latency)
                self.skipped = report.skipped
                yield report
                if report.t_end >= self.end or self._stopped.is_set():
                    break
        finally:
            if self._runner is not None:
                self._runner.stop()

    def ask(self, text: str) -> None:
        """Ask a question now (safe from any thread): the session's next chunk asks it, and its answer
        reaches the sinks as a line marked as an answer. Raises a one-line StreamVLMError (or ValueError)
        for a question the session cannot ask (empty, too long) or a session that takes none."""
        ask_session(self.session, text)

    def stop(self) -> None:
        """End the run after the chunk in progress (safe from any thread, and twice)."""
        self._stopped.set()
        if self._runner is not None:
            self._runner.stop()
        self.close()

    def close(self) -> None:
        close = getattr(self.source, "close", None)
        if close is not None:
            close()

    def summary(self) -> str | None:
        """One line: chunks commented and skipped, and the capture-to-commentary latency."""
        tally = self.latency
        if not tally.count:
            return None
        return (
            f"{tally.count} chunks commented, {self.skipped} skipped; capture-to-commentary latency "
            f"median {tally.median():.2f} s, max {tally.max:.2f} s"
        )

    # -- the two pacings -------------------------------------------------------------------------------

    def _frame(self, frame: Frame) -> None:
        self.clock.see(frame.t)
        if self.recorder is not None:
            self.recorder.write(frame)
        if self.on_frame is not None:
            self.on_frame(frame)

    def _file(self) -> Iterator[ChunkReport]:
        for chunk in chunks(tee(self.source, self._frame), self.stream):
            if chunk.t_start >= self.end or self._stopped.is_set():
                return
            started = time.monotonic()
            events = self._pushed.push(chunk.frames, chunk.t_start, chunk.t_end)
            yield ChunkReport(chunk.t_start, chunk.t_end, events, time.monotonic() - started, 0, None)

    def _live(self) -> Iterator[ChunkReport]:
        self._runner = RealtimeRunner(
            self.source, self._pushed, self.stream, budget=self.budget, on_frame=self._frame
        )
        if self._stopped.is_set():  # stopped before it started
            return iter(())
        return self._runner.run()
