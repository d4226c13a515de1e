"""Real-time pacing: a live source feeds a session without ever waiting for it.

`RealtimeRunner` runs capture (the source and the chunker) in a thread of its own and
inference in the caller's thread; between them is a queue of at most `queue_chunks` chunks.
Capture never blocks: when the queue is full the oldest waiting chunk is dropped. Inference
skips a chunk whose commentary would come later than `budget` seconds after the chunk was
captured (`core.latency.LatencyBudget`, the policy the server uses too), so latency stays bounded
however slow the model is: a slow model comments on fewer chunks, never on old ones. A model
slower than the budget itself comments on the newest chunk each time (one chunk-time late, with a
warning), rather than on none. A skipped span shows in
the time label of the next chunk that is processed (it starts where the stream is, not where the
last label ended), and every report counts the chunks skipped so far.

Each processed chunk gives a `ChunkReport`: its commentary, the capture-to-commentary latency
(from the moment the chunk's last frame arrived to the moment its commentary was ready) and the
skip count.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from core.config import StreamConfig
from core.latency import LatencyBudget
from core.media.chunker import Chunk, chunks
from core.media.sources import Source
from core.types import Commentary, CommentarySession, Frame

log = logging.getLogger(__name__)

_END = object()  # capture finished (the source ended or failed)


@dataclass(frozen=True)
class ChunkReport:
    """One processed chunk."""

    t_start: float
    t_end: float
    commentary: list[Commentary]
    latency: float  # seconds from the chunk's capture to its commentary
    skipped: int  # chunks skipped so far in this run
    skipped_span: tuple[float, float] | None  # the stream time skipped just before this chunk


class RealtimeRunner:
    """Source -> chunks -> session, with a bounded queue and a latency budget."""

    def __init__(
        self,
        source: Source,
        session: CommentarySession,
        stream: StreamConfig,
        *,
        budget: float = 2.0,
        queue_chunks: int = 2,
        on_frame: Callable[[Frame], None] | None = None,
    ) -> None:
        """`session` is local or remote (any `CommentarySession`);
        `on_frame` sees every captured frame in the capture thread (a recorder), and must keep up."""
        if queue_chunks < 1:
            raise ValueError(f"the queue must hold at least one chunk (got {queue_chunks})")
        self.source, self.session, self.stream = source, session, stream
        self.on_frame = on_frame
        self.latency = LatencyBudget(budget)  # the late-chunk policy, shared with the server
        self.queue: queue.Queue = queue.Queue(maxsize=queue_chunks)
        self.skipped = 0
        self.max_queue_depth = 0  # the most chunks ever waiting (never above queue_chunks)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards `skipped` between capture and inference
        self._capture_error: BaseException | None = None
        self._last_t_end: float | None = None
        self._thread = threading.Thread(target=self._capture, name="capture", daemon=True)

    def run(self) -> Iterator[ChunkReport]:
        """Process chunks as they come until the source ends, `stop()` is called, or capture fails."""
        self._thread.start()
        try:
            while not self._stop.is_set():
                try:
                    item = self.queue.get(timeout=0.2)
                except queue.Empty:
                    continue
                if item is _END:
                    break
                chunk, captured = item
                waited = time.monotonic() - captured
                if not self.latency.allows(waited, newest=self.queue.empty()):
                    self._skip(chunk, "it would be late")
                    continue
                report = self._process(chunk, captured)
                yield report
        finally:
            self.stop()
        if self._capture_error is not None:
            raise self._capture_error

    def stop(self) -> None:
        """Stop capture and inference; safe to call from any thread, and twice."""
        self._stop.set()
        self.source.close()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10.0)

    # -- the two sides -----------------------------------------------------------------------------

    def _capture(self) -> None:
        try:
            for chunk in chunks(tee(self.source, self.on_frame), self.stream):
                if self._stop.is_set():
                    return
                item = (chunk, time.monotonic())
                while True:
                    try:
                        self.queue.put_nowait(item)
                        break
                    except queue.Full:
                        try:  # capture never waits: the oldest waiting chunk makes room
                            old, _ = self.queue.get_nowait()
                            self._skip(old, "the queue was full")
                        except queue.Empty:
                            pass
                self.max_queue_depth = max(self.max_queue_depth, self.queue.qsize())
        except BaseException as exc:  # reported to the consumer, which re-raises it
            self._capture_error = exc
        finally:
            while True:
                try:
                    self.queue.put(_END, timeout=0.2)
                    break
                except queue.Full:
                    if self._stop.is_set():
                        break

    def _process(self, chunk: Chunk, captured: float) -> ChunkReport:
        span = None
        if self._last_t_end is not None and chunk.t_start > self._last_t_end + 1e-6:
            span = (self._last_t_end, chunk.t_start)
        started = time.monotonic()
        events = self.session.push(chunk.frames, chunk.t_start, chunk.t_end)
        done = time.monotonic()
        self.latency.record(done - started)
        self._last_t_end = chunk.t_end
        with self._lock:
            skipped = self.skipped
        return ChunkReport(chunk.t_start, chunk.t_end, events, done - captured, skipped, span)

    def _skip(self, chunk: Chunk, why: str) -> None:
        with self._lock:
            self.skipped += 1
        log.debug("skipped chunk %.1f-%.1f s: %s", chunk.t_start, chunk.t_end, why)


def tee(frames: Iterable[Frame], on_frame: Callable[[Frame], None] | None) -> Iterator[Frame]:
    """The frames, each shown to `on_frame` first (the recorder writes every frame, the model sees two a second)."""
    for frame in frames:
        if on_frame is not None:
            on_frame(frame)
        yield frame
