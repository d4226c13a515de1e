"""`RemoteSession`: the `Session` interface over WebSocket, so the CLI and the GUI need not know
where the model runs (protocol: core/remote/protocol.py; server: core/remote/server.py).

A connection that drops (the server restarts, the network blips, the server stops answering)
is opened again with backoff, as a new session whose previous text is the old one's plus all
commentary received so far; the chunk that was in flight goes to the new session. The user sees
a gap, not an end. Questions (`ask`) go to the server before the next chunk; one not yet answered when
the connection drops is asked again by the new session. Refusals that a retry cannot fix (a wrong token, another protocol version, a
message the server rejected) end the session with the server's reason, and so does a server
that failed (1011) on the same chunk twice: it would fail on it forever.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import deque
from collections.abc import Sequence
from contextlib import ExitStack

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.sync.client import ClientConnection, connect

from core.errors import StreamVLMError
from core.media.reconnect import Backoff, Reconnector, StateCallback
from core.remote import protocol as p
from core.types import Closeable, Commentary, Frame, one_line

log = logging.getLogger(__name__)

DEFAULT = "<the engine's default instruction>"
# Closes a new session can get past: the server went away, failed, was full, or timed us out. Every
# other close (above all the protocol's refusals: 1003, 1008, 1009, 4001, 4004) ends the session.
RETRYABLE_CODES = {1001, 1006, p.CLOSE_INTERNAL, p.CLOSE_TOO_MANY_SESSIONS, p.CLOSE_IDLE}
SENDS_AFTER_FAILURE = 1  # a chunk the server failed on (1011) is sent to a new session once more, no more
RESUME_HEAD_CHARS, RESUME_TAIL_CHARS = 4_000, 28_000  # previous text of a resumed session
RECENT_LINES = 256  # the commentary lines a session keeps for its caller (`commentary`): the latest
ELLIPSIS = " ... "  # where a previous text too long to send was cut
DEFAULT_BACKOFF = Backoff(initial=0.25, factor=2.0, cap=2.0, give_up_after=60.0)


class ServerLost(StreamVLMError):
    """The connection ended in a way that a new session can fix; `code` is the close code, if any."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class RemoteSession(Closeable):
    """One stream on a remote server: `push(frames, t_start, t_end)` returns that chunk's commentary.

    Frames are sent as JPEG (quality 90) unless `image_format="png"` (lossless, but an HD PNG is
    megabytes); `push_images` sends frames already encoded. After each chunk, `last_latency` is the
    server's arrival-to-done time (seconds) and `last_timing` its split (`chunk_done`'s `timing`, ms).
    A chunk the server failed (out of GPU memory there) yields no commentary and is logged as an error;
    `failed` counts them and `last_failure` says why the last push failed (None when it did not), as
    `core.chunk_guard.GuardedSession` does for a local session.

    `reconnect` is the backoff for reopening a dropped connection (None: a drop ends the session);
    `on_state` hears "reconnecting" and "connected" as a live source's reconnector reports them.
    The first connection is not retried: a wrong URL fails at once with its reason.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        instruction: str | None = DEFAULT,
        previous_text: str = "",
        seed: int | None = None,
        image_format: str = "jpeg",
        timeout: float = 30.0,
        reconnect: Backoff | None = DEFAULT_BACKOFF,
        on_state: StateCallback | None = None,
    ) -> None:
        if image_format not in ("png", "jpeg"):
            raise ValueError(f"image_format must be png or jpeg (got {image_format!r})")
        self.url, self.image_format, self.timeout = url, image_format, timeout
        self.last_latency: float | None = None
        self.last_timing: dict[str, float] | None = None  # the last chunk's `timing` from the server (ms)
        self.skipped = 0
        self.failed = 0
        self.last_failure: str | None = None
        self.reconnects = 0
        # The latest lines received. What a resumed session is told was said is kept apart, as the start
        # and the end of it that it is cut to: a list of every line grew with the stream (about 200 bytes
        # a line: 17 MiB a day of one-second chunks).
        self.commentary: deque[Commentary] = deque(maxlen=RECENT_LINES)
        self._said = _Transcript(RESUME_HEAD_CHARS + RESUME_TAIL_CHARS)
        self._said.add(previous_text)
        self._questions: deque[str] = deque()  # asked here, not yet sent to the server
        # (question, reason) of each question the server refused (too long for its model), oldest first;
        # the stream went on. A caller that shows refusals takes them from here.
        self.refused: list[tuple[str, str]] = []
        # Sent, and not yet asked by a chunk the server ran: a new session after a drop is sent it again.
        self._unasked: str | None = None
        self._sent = False  # whether this connection's session has been sent `_unasked`
        self._hello: dict = {"version": p.VERSION, "seed": seed}
        if instruction is not DEFAULT:  # left out: the server's default instruction, as a local Session
            self._hello["instruction"] = instruction
        if token:
            self._hello["token"] = token
        self._closed = threading.Event()
        self._reconnector = (
            Reconnector(f"the server at {url}", reconnect, on_state, self._closed) if reconnect else None
        )
        self._stack = ExitStack()  # the connection is a context manager; the session closes it
        self._ws = self._open(previous_text)

    def ask(self, text: str) -> None:
        """Queue a question (safe from any thread): it goes to the server with the next chunk, which asks
        it; its answer comes back from that `push` as a `Commentary` whose `question` is set. The server
        asks one question a chunk; an empty question is refused here (ValueError), one longer than the
        model's limit by the server, which says why (`refused`) and goes on with the stream."""
        question = one_line(text)
        if not question:
            raise ValueError("a question needs some text; it was empty")
        self._questions.append(question)

    @property
    def questions_waiting(self) -> int:
        """Questions asked that no chunk the server ran has asked yet."""
        return len(self._questions) + (self._unasked is not None)

    def push(self, frames: Sequence[np.ndarray | Frame], t_start: float, t_end: float) -> list[Commentary]:
        images = [_encode_image(f.rgb if isinstance(f, Frame) else f, self.image_format) for f in frames]
        return self.push_images(images, t_start, t_end)

    def push_images(self, images: Sequence[bytes], t_start: float, t_end: float) -> list[Commentary]:
        """`push` for frames already encoded (PNG or JPEG bytes, one per frame), sent as they are."""
        fields = {"t_start": float(t_start), "t_end": float(t_end), "frames": len(images)}
        try:  # the server's rule, checked here too: a chunk it would refuse is not sent at all
            p.chunk_header({"type": "chunk", **fields})
        except p.ProtocolError as exc:
            raise ValueError(exc.reason) from None
        for image in images:
            if not isinstance(image, bytes | bytearray | memoryview):
                raise TypeError(f"push_images takes encoded frames (bytes), not {type(image).__name__}")
            if len(image) > self.max_image_bytes:  # the server would close the session (1009)
                raise StreamVLMError(
                    f"an encoded frame of {len(image):,} bytes is over the server's limit of "
                    f"{self.max_image_bytes:,}; send JPEG or a smaller frame"
                )
        header = p.encode("chunk", **fields)
        images = [bytes(image) for image in images]
        # One question a chunk, as the engine asks them; the next waits here until this one is asked.
        if self._unasked is None and self._questions:
            self._unasked = self._questions.popleft()
            self._sent = False
        failures = 0
        for attempt in range(3):
            try:
                if self._unasked is not None and not self._sent:
                    self._send(self._ws, p.encode("question", text=self._unasked))
                    self._sent = True
                events = self._exchange(header, images)
            except ServerLost as exc:
                failures += exc.code == p.CLOSE_INTERNAL
                if (
                    self._reconnector is None
                    or self._closed.is_set()
                    or attempt == 2
                    or failures > SENDS_AFTER_FAILURE
                ):
                    raise
                self._resume(str(exc))
                continue
            self.commentary.extend(events)
            for line in events:
                if not line.is_answer:  # answers are not commentary
                    self._said.add(line.text)
            return events
        raise AssertionError("unreachable")

    @property
    def resume_text(self) -> str:
        """The previous text a resumed session starts from: the old one's and all commentary since."""
        return self._said.text()

    def close(self) -> None:
        self._closed.set()  # also stops a reconnection in progress in another thread
        self._stack.close()

    # -- one connection -----------------------------------------------------------------------

    def _open(self, previous_text: str) -> ClientConnection:
        stack = ExitStack()
        try:
            ws = stack.enter_context(connect(self.url, open_timeout=self.timeout, max_size=p.MAX_TEXT_BYTES))
        except (InvalidURI, ValueError) as exc:  # ValueError: a port that is no number, a bad [IPv6]
            raise StreamVLMError(f"{self.url} is not a server URL ({exc}); use ws://host:port") from None
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise ServerLost(
                f"cannot reach the server at {self.url} ({exc}); check the URL and that it runs"
            ) from None
        try:
            self._send(ws, self._hello_message(previous_text))
            ready = p.decode(self._recv(ws), ("ready",))
        except BaseException:
            stack.close()
            raise
        self.session_id = ready["session"]
        self.replica = p.ready_replica(ready)  # a cluster's replica serving this connection (else None)
        limit = ready.get("max_image_bytes")
        self.max_image_bytes = limit if type(limit) is int and limit > 0 else p.MAX_IMAGE_BYTES
        # The server's limits on a chunk, left out by older servers: frames (the protocol's), vision tokens
        # (a server with a cache pool: `stream.fps` x `stream.chunk_seconds` frames of any size always fit),
        # and questions not yet asked.
        self.max_frames_per_chunk = p.ready_limit(ready, "max_frames_per_chunk", p.MAX_FRAMES_PER_CHUNK)
        self.max_chunk_vision_tokens = p.ready_limit(ready, "max_chunk_vision_tokens")
        self.max_questions_waiting = p.ready_limit(ready, "max_questions_waiting")
        self._stack = stack
        return ws

    def _hello_message(self, previous_text: str) -> str:
        """The hello, its previous text cut in the middle (as the engine would) to fit MAX_TEXT_BYTES."""
        chars = len(previous_text)
        while True:
            text = _shorten(previous_text, chars)
            message = p.encode("hello", **self._hello, previous_text=text)
            excess = len(message.encode()) - p.MAX_TEXT_BYTES
            if excess <= 0:
                return message
            if not text:
                raise StreamVLMError(
                    f"the instruction (and token) make a hello of {len(message.encode())} bytes, over the "
                    f"protocol's limit of {p.MAX_TEXT_BYTES}; shorten the instruction"
                )
            chars = max(0, len(text) - excess - len(ELLIPSIS))  # each character is at least one byte

    def _resume(self, reason: str) -> None:
        self._stack.close()
        assert self._reconnector is not None
        ws = self._reconnector.reopen(
            lambda: self._open(self.resume_text), reason, retry_on=(ServerLost,), give_up=StreamVLMError
        )
        if ws is None:
            raise StreamVLMError("the session was closed while reconnecting")
        self._ws = ws
        self._sent = False  # the new session has not heard the question the old one had not asked
        self.reconnects += 1

    def _exchange(self, header: str, images: list[bytes]) -> list[Commentary]:
        self._send(self._ws, header)
        for image in images:
            self._send(self._ws, image)
        events = []
        while True:
            message = p.decode(self._recv(self._ws), ("commentary", "question_refused", "chunk_done"))
            if message["type"] == "question_refused":  # the stream goes on; the caller hears why
                refusal = (p.field(message, "question", str, ""), p.field(message, "reason", str, ""))
                log.warning("the server refused the question %r: %s", *refusal)
                self.refused.append(refusal)
                continue
            if message["type"] == "commentary":
                question = p.answer_question(message)
                events.append(Commentary(message["start"], message["end"], message["text"], question))
                continue
            self.last_latency = message["latency"]
            self.last_timing = _timing(message.get("timing"))  # left out by older servers
            self.skipped += bool(message["skipped"])
            failed = p.field(message, "failed", (str, type(None)), None)  # left out by older servers
            self.last_failure = failed or None
            if failed:  # the chunk failed on the server (out of GPU memory); the session goes on
                self.failed += 1
                log.error("the server: %s", failed)
            if not message["skipped"]:  # the server ran the chunk: it asked the question it had
                self._unasked = None
            return events

    def _send(self, ws: ClientConnection, message: str | bytes) -> None:
        try:
            ws.send(message)
        except ConnectionClosed as exc:
            raise self._ended(exc) from None

    def _recv(self, ws: ClientConnection) -> str | bytes:
        try:
            return ws.recv(timeout=self.timeout)
        except ConnectionClosed as exc:
            raise self._ended(exc) from None
        except TimeoutError:
            raise ServerLost(f"the server at {self.url} did not answer for {self.timeout:.0f} s") from None

    def _ended(self, exc: ConnectionClosed) -> StreamVLMError:
        close = exc.rcvd
        reason = (
            f"{close.reason or 'no reason given'} (code {close.code})" if close else "the connection dropped"
        )
        message = f"the server at {self.url} closed the session: {reason}"
        if close is None or close.code in RETRYABLE_CODES:
            return ServerLost(message, close.code if close else None)
        return StreamVLMError(message)


class _Transcript:
    """Pieces of text joined by spaces, as `_shorten(text, chars)` cuts them (their start and end), in
    memory that does not grow with the pieces: the first `chars` characters and the latest pieces that
    make up the last `chars`."""

    def __init__(self, chars: int) -> None:
        self.chars = chars
        self._length = 0  # of the whole text
        self._start = ""  # its first `chars` characters
        self._end: deque[str] = deque()  # its latest pieces (each with its space), at least `chars` long
        self._end_length = 0

    def add(self, piece: str) -> None:
        piece = piece.strip()
        if not piece:
            return
        piece = f" {piece}" if self._length else piece
        self._length += len(piece)
        self._start += piece[: max(0, self.chars - len(self._start))]
        self._end.append(piece)
        self._end_length += len(piece)
        while self._end_length - len(self._end[0]) >= self.chars:
            self._end_length -= len(self._end.popleft())

    def text(self) -> str:
        if self._length <= self.chars:
            return self._start  # the whole text
        # Longer: `_shorten` takes fewer than `chars` characters from its start and end, all in these two.
        return _shorten(self._start + "".join(self._end)[-self.chars :], self.chars)


def _shorten(text: str, chars: int) -> str:
    """`text` in at most about `chars` characters: its start and end, as the engine keeps them."""
    if len(text) <= chars:
        return text
    keep = max(0, chars - len(ELLIPSIS))
    head = keep * RESUME_HEAD_CHARS // (RESUME_HEAD_CHARS + RESUME_TAIL_CHARS)
    return text[:head] + ELLIPSIS + text[len(text) - (keep - head) :] if keep else ""


def _timing(timing: object) -> dict[str, float] | None:
    """A `chunk_done`'s `timing`: its numeric fields (milliseconds) by name; anything else is ignored."""
    if not isinstance(timing, dict):
        return None
    return {
        str(name): float(value)
        for name, value in timing.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def _encode_image(rgb: np.ndarray, image_format: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(
        buffer, format=image_format.upper(), **({"quality": 90} if image_format == "jpeg" else {})
    )
    return buffer.getvalue()
