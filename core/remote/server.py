"""Remote inference: one model served over WebSocket to many clients (protocol: core/remote/protocol.py).

`python -m core serve --model M` binds to loopback unless told otherwise, and refuses any other
address without a token; tokens are compared in constant time. Each connection is one session:
`hello` (version, token, instruction, previous text, seed) -> `ready`, then per chunk a `chunk`
message and its frames as binary PNG/JPEG messages -> `commentary` events and `chunk_done` (with
the chunk's `timing` on the server: its wait for the model and where the model's time went).
A `question` message between chunks is asked by the session's next chunk; its answer is a
`commentary` event carrying the question.
Chunks from all sessions take turns on the model (one at a time); a chunk that waited longer
than the latency budget is skipped and reported as such (unless the model alone is slower than
the budget: then a chunk that waited behind at most one other is still answered). A message
that breaks the protocol or a limit closes its own connection with a code and a reason that
names the problem (a bug of the server's: 1011 and its traceback in the log); the server and
the other sessions go on. Frames are decoded as PNG or JPEG only, sized from their header
first (a JPEG's scans counted in its bytes), on threads: the event loop never decodes. A session
decodes one frame at a time, each resized to the model's size at once, so a chunk holds its frames
at that size plus one frame at full size, and no session holds more than one of the shared decoder
threads; a chunk whose frames would need more vision tokens than a session's cache slot has room for
is refused from its first frame's header, saying how many such frames fit. A session slot is held
from a valid hello until that session closes, on every path. The connections held open are capped (in
all, and per address those without an accepted hello), refusals logged once per burst; a connection
must send its hello within HELLO_TIMEOUT_S, and is closed after `idle_timeout` seconds idle
afterwards. Each session's open and close are logged with the peer and the reason. A wrong token is
refused after a wait that grows with each one from that address (core/remote/guard.py), logged once
per burst. `shut_down` closes every session with 1001 "server shutting down" (SIGINT, SIGTERM).

Every rule of a session lives in `InferenceServer.run_session`, whatever carries its messages: a
`Connection`. `handle` is the WebSocket server's (the `websockets` library, `serve`); the cluster's
replicas (core/remote/cluster.py) hand it the ASGI WebSocket of Ray Serve's proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import hmac
import io
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import torch
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from core.chunk_guard import GuardedSession
from core.conversation import QuestionError
from core.engine import DEFAULT_INSTRUCTION, ChunkStats, Session, StreamingEngine
from core.errors import ConfigError, SourceError, StreamVLMError
from core.frames import _resize, target_size
from core.latency import LatencyBudget
from core.pool import CapacityError
from core.remote import protocol as p
from core.remote.guard import Admission, BurstLog, ConnectionLimits, TokenGuard

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
CLOSE_GOING_AWAY = 1001  # RFC 6455's code for a server going down
SHUTDOWN_REASON = "server shutting down"
HELLO_TIMEOUT_S = 10.0  # a client sends its hello as soon as it has connected; an idle one holds a descriptor
# The read queue of one connection (websockets' `max_queue`, in frames): reading from its socket pauses
# once more than 2 frames wait, until none does. A session reads the next frame while one decodes, and a
# connection whose wrong token is being refused slowly reads nothing, so with compression off (frames are
# JPEG or PNG, which do not compress; text messages are small) a connection buffers at most about 3
# messages of MAX_IMAGE_BYTES and one being received, whatever it sends: with the default 16 and
# permessage-deflate, 8 KB on the wire became 8 MiB each, 16 of them queued before the token was checked.
READ_QUEUE = 2
# Connections held open: each session's, and as many again opening, being refused or reconnecting, plus
# CONNECTIONS_SPARE; per address, connections without an accepted hello: as many as the server has
# sessions, plus PENDING_SPARE (clients starting together behind one address). Each costs a descriptor
# and its buffers; `serve` keeps the total under half the open-files limit.
CONNECTIONS_SPARE = 32
PENDING_SPARE = 8
ACCEPT_OUT_OF_RESOURCES = "socket.accept() out of system resource"  # asyncio's message for EMFILE & co.


class Disconnected(Exception):
    """The client's connection ended: it closed it, or it dropped."""


class Connection(Protocol):
    """One client's connection, whatever transport carries it. `recv` and `send` raise `Disconnected`
    once it has ended; `peer` (address:port) names it in the log, `host` is what wrong tokens are counted by."""

    peer: str
    host: str

    async def recv(self) -> str | bytes: ...

    async def send(self, message: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...

    async def wait_closed(self) -> None: ...


class WebsocketsConnection:
    """A `Connection` over the `websockets` library's server side (the single server's transport)."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws, self.peer, self.host = ws, _peer(ws), _host(ws)

    async def recv(self) -> str | bytes:
        try:
            return await self.ws.recv()
        except ConnectionClosed as exc:
            raise Disconnected(str(exc)) from None

    async def send(self, message: str) -> None:
        try:
            await self.ws.send(message)
        except ConnectionClosed as exc:
            raise Disconnected(str(exc)) from None

    async def close(self, code: int, reason: str) -> None:
        # What the client sent before it saw the close waits in the read queue, whose reading pauses
        # once it holds READ_QUEUE frames, and the client's answering close would wait behind it until
        # the library's close timeout: the rest is read and dropped until the connection has closed.
        closing = asyncio.ensure_future(self.ws.close(code, reason))
        try:
            while not closing.done():
                await self.ws.recv()
        except ConnectionClosed:
            pass
        finally:
            await closing

    async def wait_closed(self) -> None:
        await self.ws.wait_closed()


def check_exposure(host: str, token: str | None) -> None:
    """The rule for where a server may listen: loopback, or any address with a token (ConfigError)."""
    if host not in LOOPBACK and not token:
        raise ConfigError(
            f"refusing to listen on {host} without a token; pass --token-file or bind to 127.0.0.1"
        )


class InferenceServer:
    def __init__(
        self,
        engine: StreamingEngine,
        *,
        token: str | None = None,
        max_sessions: int = 4,
        idle_timeout: float = 60.0,
        budget: float = 2.0,
        replica: str | None = None,
        max_connections: int | None = None,
        max_pending_per_host: int | None = None,
    ) -> None:
        self.engine, self.token = engine, token
        self.replica = replica  # a cluster replica's id, told to clients in "ready" (None: a single server)
        # An engine with a cache pool carries as many sessions as it has slots (its memory decides).
        self.max_sessions = engine.pool.slots if engine.pool is not None else max_sessions
        self.idle_timeout = idle_timeout
        self.guard = TokenGuard()  # wrong tokens from one address: refused ever more slowly
        self.connection_limits = ConnectionLimits(
            max_connections if max_connections is not None else 2 * self.max_sessions + CONNECTIONS_SPARE,
            max_pending_per_host if max_pending_per_host is not None else self.max_sessions + PENDING_SPARE,
        )
        self._refused = BurstLog("connections refused")
        self._accept_failures = BurstLog("cannot accept connections")
        self.sessions = 0  # slots held: sessions starting or open
        self._ids = itertools.count(1)
        # Without batched decode steps, one chunk is on the model at a time and sessions take turns;
        # with them (`StreamingEngine(batched=True)`), chunks of all sessions run at once, each in a
        # thread of its own, and the engine batches their decode steps.
        self.batched = engine.scheduler is not None
        self._model_lock = asyncio.Lock() if not self.batched else contextlib.nullcontext()
        self._pushers = ThreadPoolExecutor(max(1, self.max_sessions), thread_name_prefix="session")
        self.latency = LatencyBudget(budget)  # the late-chunk policy, shared with the real-time runner
        # Frames are decoded on threads of their own, never on the event loop, and not on the threads
        # the model's chunks run on. One per session slot: a session decodes one frame at a time
        # (`_frames`), so no session's frame waits behind another session's.
        self._decoder = ThreadPoolExecutor(max(1, self.max_sessions), thread_name_prefix="frame-decoder")
        # The vision tokens one chunk may need: what a session's cache slot is sized for (core.pool.slot_tokens:
        # frames_per_chunk frames at max_pixels). A chunk over it would not fit the slot once the
        # vision window is full. Without a pool a session's cache grows: no limit but the protocol's.
        vision, stream = engine.model.vision, engine.stream
        self.max_chunk_tokens = (
            math.ceil(stream.frames_per_chunk / vision.temporal_patch_size)
            * (stream.max_pixels // vision.factor**2)
            if engine.pool is not None
            else None
        )
        # What every session here runs with, told to clients in "ready" (a client must send `fps` frames
        # a second), as plain JSON values.
        self._settings = {
            "stream": _plain(engine.stream),
            "cache": _plain(engine.cache_policy),
            "generation": _plain(engine.generation),
        }

    async def serve(self, host: str = "127.0.0.1", port: int = 8765, ssl=None) -> Server:
        check_exposure(host, self.token)
        files = raise_open_files_limit()
        if files is not None:  # half the descriptors for connections, the rest for everything else
            self.connection_limits.total = min(self.connection_limits.total, max(16, files // 2))
        self._quiet_accept_failures(asyncio.get_running_loop())
        # The largest message is a frame (the library refuses a larger one, 1009, before buffering it);
        # text messages are held to MAX_TEXT_BYTES by p.decode. No compression, a short read queue: READ_QUEUE.
        return await serve(
            self.handle,
            host,
            port,
            max_size=p.MAX_IMAGE_BYTES,
            max_queue=READ_QUEUE,
            compression=None,
            ssl=ssl,
            logger=_ConnectionLog(logging.getLogger("websockets.server"), {}),
        )

    def _quiet_accept_failures(self, loop: asyncio.AbstractEventLoop) -> None:
        """Out of file descriptors, asyncio's accept loop reports every failed accept (with a traceback)
        to the loop's exception handler: hundreds of thousands a minute. They are logged as a burst here
        instead (one warning, then a count), and other reports go where they went."""
        previous = loop.get_exception_handler()

        def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
            if context.get("message") == ACCEPT_OUT_OF_RESOURCES:
                exc = context.get("exception")
                self._accept_failures.note(
                    "accept",
                    f"{exc or 'out of resources'}; {self.connection_limits.open} connections open (at most "
                    f"{self.connection_limits.total}); new ones wait until descriptors are free (raise `ulimit -n`)",
                )
            elif previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handler)

    async def handle(self, ws: ServerConnection) -> None:
        """The WebSocket server's handler: one connection, one session (`run_session`)."""
        await self.run_session(WebsocketsConnection(ws))

    async def run_session(self, conn: Connection) -> None:
        """One connection, one session: whatever ends it, its slot is freed and the close is logged. A
        connection over the limits (`ConnectionLimits`) is closed at once, logged once per burst."""
        admission = self.connection_limits.admit(conn.host)
        if isinstance(admission, str):
            self._refused.note(conn.host, admission)
            await conn.close(p.CLOSE_TOO_MANY_SESSIONS, p.close_reason(admission))
            return
        try:
            await self._run_session(conn, admission)
        finally:
            admission.close()

    async def _run_session(self, conn: Connection, admission: Admission) -> None:
        name = f"connection from {conn.peer}"
        try:
            hello = p.decode(await self._recv(conn, min(self.idle_timeout, HELLO_TIMEOUT_S)), ("hello",))
            if not self._admit(hello):  # a wrong token: refused after the guard's wait, logged by it
                await self.guard.refuse(conn.host, conn.wait_closed())
                await conn.close(p.CLOSE_POLICY, "missing or wrong token")
                return
            admission.greeted()
            with self._slot():
                session = await self._start(hello)
                try:
                    number = next(self._ids)
                    name = f"session {number} ({conn.peer})"
                    # Old clients ignore `replica`, which only a cluster's replicas send.
                    where = {"replica": self.replica} if self.replica is not None else {}
                    # Old clients ignore the limits too; `max_chunk_vision_tokens` only with a pool.
                    tokens = (
                        {"max_chunk_vision_tokens": self.max_chunk_tokens} if self.max_chunk_tokens else {}
                    )
                    await conn.send(
                        p.encode(
                            "ready",
                            version=p.VERSION,
                            session=number,
                            max_image_bytes=p.MAX_IMAGE_BYTES,
                            max_frames_per_chunk=p.MAX_FRAMES_PER_CHUNK,
                            max_questions_waiting=p.MAX_QUESTIONS_WAITING,
                            **tokens,
                            config=self._settings,
                            **where,
                        )
                    )
                    log.info("%s opened", name)
                    while True:
                        await self._chunk(conn, session)
                finally:
                    session.close()
        except p.ProtocolError as exc:
            code, reason = exc.code, exc.reason
        except Disconnected as exc:
            log.info("%s closed: %s", name, exc)
            return
        except Exception:  # a bug of the server's: its traceback once here, a reason for the client
            log.exception("%s failed", name)
            code, reason = p.CLOSE_INTERNAL, "internal error; see the server log"
        log.info("%s closed: %s (code %d)", name, reason, code)
        await conn.close(code, p.close_reason(reason))

    async def shut_down(self, listening: Server) -> None:
        """Stop taking connections and close every session with 1001 and SHUTDOWN_REASON (a client that
        retries finds the server again once it is back); returns when every connection's handler has
        ended (a chunk on the model is finished first)."""
        listening.close(code=CLOSE_GOING_AWAY, reason=SHUTDOWN_REASON)
        await listening.wait_closed()

    def _admit(self, hello: dict) -> bool:
        """Whether the hello's token is right; ProtocolError for a version this server does not speak."""
        version = hello.get("version")
        if type(version) is not int or version != p.VERSION:
            raise p.ProtocolError(
                p.CLOSE_BAD_VERSION,
                f"this server speaks protocol {p.VERSION}, the client {p.show(version)}; update the older side",
            )
        offered = p.field(hello, "token", str, "")
        return not self.token or hmac.compare_digest(offered.encode(), self.token.encode())

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        """Holds one of `max_sessions` slots while the session starts and lives, freed on every path.

        The check and the reservation run with no await between them, so concurrent hellos cannot
        both take the last slot.
        """
        if self.sessions >= self.max_sessions:
            raise p.ProtocolError(
                p.CLOSE_TOO_MANY_SESSIONS,
                f"the server is full: it has room for {self.max_sessions} sessions; try again later, "
                "or use another server",
            )
        # Batched, a chunk's measured time grows with the load; once it passes the budget, one more
        # stream would only make every stream late.
        busy = self.latency.seconds_per_chunk
        if self.batched and self.sessions and busy > self.latency.budget:
            raise p.ProtocolError(
                p.CLOSE_TOO_MANY_SESSIONS,
                f"the server is at capacity: with {self.sessions} streams a chunk takes {busy:.1f} s against "
                f"its {self.latency.budget:g} s latency budget; try again later, or use another server",
            )
        self.sessions += 1
        try:
            yield
        finally:
            self.sessions -= 1

    async def _start(self, hello: dict) -> Session:
        options = dict(
            instruction=p.field(hello, "instruction", (str, type(None)), DEFAULT_INSTRUCTION),
            previous_text=p.field(hello, "previous_text", str, ""),
            seed=p.field(hello, "seed", (int, type(None)), None),
        )
        try:
            # On a thread, and between chunks: a session tokenizes its previous text and allocates on
            # the model's device, which must neither stall the loop nor overlap a chunk on the model.
            async with self._model_lock:
                return await self._in_thread(functools.partial(self.engine.start, **options))
        except CapacityError as exc:  # every cache slot is taken
            raise p.ProtocolError(p.CLOSE_TOO_MANY_SESSIONS, f"the server is full: {exc}") from None
        except (ValueError, OverflowError, StreamVLMError) as exc:  # e.g. a seed the generator cannot take
            raise p.ProtocolError(p.CLOSE_MALFORMED, f"the hello was refused: {exc}") from None

    async def _in_thread(self, call, *args):
        """Model work on a thread of the sessions' pool (one per session slot), never on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pushers, functools.partial(call, *args))

    async def _recv(self, conn: Connection, timeout: float | None = None) -> str | bytes:
        timeout = self.idle_timeout if timeout is None else timeout
        try:
            message = await asyncio.wait_for(conn.recv(), timeout)
        except TimeoutError:
            raise p.ProtocolError(p.CLOSE_IDLE, f"idle for {timeout:g} s") from None
        # The largest message is a frame. The `websockets` transport refuses a larger one itself; a
        # transport that hands over whatever came (an ASGI proxy's, up to its own limit) is held to it here.
        if isinstance(message, bytes) and len(message) > p.MAX_IMAGE_BYTES:
            raise p.ProtocolError(
                p.CLOSE_TOO_BIG,
                f"a message of {len(message)} bytes is over the limit of {p.MAX_IMAGE_BYTES} bytes",
            )
        return message

    async def _frames(self, conn: Connection, count: int) -> list[np.ndarray]:
        """A chunk's `count` frames, decoded off the event loop one at a time (the next one is received
        meanwhile, READ_QUEUE), each resized to the model's size as soon as it is decoded; the first
        bad frame's error closes the connection. One at a time, a session holds at most one of the
        decoder threads (one per session slot), so every other session's frame finds one free."""
        loop = asyncio.get_running_loop()
        check = functools.partial(self._plan, _ChunkPlan(count))
        frames = []
        for _ in range(count):
            data = await self._recv(conn)
            if isinstance(data, str):
                raise p.ProtocolError(
                    p.CLOSE_UNSUPPORTED, "expected a frame (a binary PNG or JPEG), got text"
                )
            frames.append(await loop.run_in_executor(self._decoder, decode_frame, data, check))
        return frames

    def _plan(self, plan: _ChunkPlan, width: int, height: int) -> tuple[int, int]:
        """From a frame's header, before its pixels are decoded: refuses a frame this engine cannot resize
        (the model's aspect-ratio limit) and, from the chunk's first frame, a chunk that needs more vision
        tokens than a session has room for; returns the (height, width) the frame is resized to (the
        model's size for the chunk's first frame: `core.frames.video_input` resizes a chunk's frames to it)."""
        stream, vision = self.engine.stream, self.engine.model.vision
        try:
            size = target_size(height, width, stream, vision)
        except SourceError as exc:
            raise p.ProtocolError(p.CLOSE_UNSUPPORTED, str(exc)) from None
        if plan.size is None:
            per_group = (size[0] // vision.factor) * (size[1] // vision.factor)
            need = math.ceil(plan.count / vision.temporal_patch_size) * per_group
            if self.max_chunk_tokens is not None and need > self.max_chunk_tokens:
                most = self.max_chunk_tokens // per_group * vision.temporal_patch_size
                raise p.ProtocolError(
                    p.CLOSE_UNSUPPORTED,
                    f"{plan.count} frames of {width}x{height} need {need:,} vision tokens, over the "
                    f"{self.max_chunk_tokens:,} a chunk has: send at most {most} such frames a chunk",
                )
            plan.size = size
        return plan.size

    async def _chunk(self, conn: Connection, session: Session) -> None:
        message = p.decode(await self._recv(conn), ("chunk", "question"))
        if message["type"] == "question":
            await self._ask(conn, session, p.question_text(message))
            return
        t_start, t_end, count = p.chunk_header(message)
        # The chunk's latency counts from here, its header: receiving and decoding its frames included.
        arrived = time.monotonic()
        frames = await self._frames(conn, count)
        decoded = time.monotonic()
        async with self._model_lock:
            started = time.monotonic()
            # The late-chunk policy judges the wait for the model; `queued` (the timing's queue_ms) is
            # everything before the model started on it.
            waited, queued = started - decoded, started - arrived
            # A session sends its next chunk only after this one is done, so each chunk is its stream's
            # newest; one that waited behind at most one other session's chunk still counts as fresh.
            if not self.latency.allows(waited, newest=waited < self.latency.seconds_per_chunk):
                await self._done(conn, t_start, t_end, arrived, queued, skipped=True)
                return
            try:
                # Batched, the scheduler runs the chunk with the earliest deadline first.
                deadline = time.perf_counter() + self.latency.budget - (time.monotonic() - arrived)
                # Out of GPU memory fails this chunk alone: its chunk_done says why, the session goes on.
                guarded = GuardedSession(session)
                push = functools.partial(guarded.push, deadline=deadline)
                events = await self._in_thread(push, frames, t_start, t_end)
            except ValueError as exc:  # times that go back before the previous chunk's
                raise p.ProtocolError(p.CLOSE_MALFORMED, str(exc)) from None
            except StreamVLMError as exc:  # frames the model cannot take
                raise p.ProtocolError(p.CLOSE_UNSUPPORTED, str(exc)) from None
            self.latency.record(time.monotonic() - started)
            stats = getattr(session, "last_stats", None) if guarded.last_failure is None else None
        for event in events:
            answer = {"question": event.question} if event.is_answer else {}
            await conn.send(
                p.encode("commentary", start=event.start, end=event.end, text=event.text, **answer)
            )
        await self._done(
            conn, t_start, t_end, arrived, queued, skipped=False, stats=stats, failed=guarded.last_failure
        )

    async def _ask(self, conn: Connection, session: Session, text: str) -> None:
        """Queue a question for the session's next chunk. One the session cannot ask (too long: the
        client cannot count the model's tokens) is answered with `question_refused` and the stream goes
        on; a malformed question message has already closed the connection (`p.question_text`). So is one
        past MAX_QUESTIONS_WAITING not yet asked: a chunk asks one, and a flood of them grew without bound."""
        waiting = session.questions_waiting
        if waiting >= p.MAX_QUESTIONS_WAITING:
            reason = (
                f"{waiting} questions are waiting already, the most a session holds; each chunk asks one, "
                "so ask again once one is answered"
            )
            await conn.send(p.encode("question_refused", question=text, reason=reason))
            return
        try:
            # On a thread: checking a question tokenizes it, which must not hold up the event loop.
            await self._in_thread(session.ask, text)
        except QuestionError as exc:
            await conn.send(p.encode("question_refused", question=text, reason=str(exc)))

    async def _done(
        self,
        conn: Connection,
        t_start: float,
        t_end: float,
        arrived: float,
        waited: float,
        *,
        skipped: bool,
        stats=None,
        failed: str | None = None,
    ) -> None:
        """The chunk's `chunk_done`, with the latency (from its header's arrival, `arrived`) and the server's
        `timing` of it (`waited`: arrival to the model starting on it, or to being skipped), and `failed`
        (why) for a chunk that failed on the server (out of GPU memory)."""
        total = time.monotonic() - arrived
        timing = chunk_timing(waited, total, stats)
        why = {"failed": failed} if failed is not None else {}
        await conn.send(
            p.encode(
                "chunk_done",
                t_start=t_start,
                t_end=t_end,
                skipped=skipped,
                latency=total,
                timing=timing,
                **why,
            )
        )


class ServerThread:
    """An `InferenceServer` on a loopback port, its event loop in a thread of its own (tests, load runs)."""

    def __init__(self, server: InferenceServer, port: int = 0) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.ws_server = self.loop.run_until_complete(server.serve("127.0.0.1", port))
            except BaseException as exc:  # reported to the caller below
                failure.append(exc)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True, name="server")
        self.thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        self.url = f"ws://127.0.0.1:{next(iter(self.ws_server.sockets)).getsockname()[1]}"

    def stop(self) -> None:
        async def shutdown() -> None:
            await self.server.shut_down(self.ws_server)

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


@dataclasses.dataclass
class _ChunkPlan:
    """What a chunk's first frame decides for the rest, its frames being decoded one after another."""

    count: int  # the chunk's frames
    size: tuple[int, int] | None = None  # (height, width) every frame is resized to: the model's size


def jpeg_scans(data: bytes) -> int:
    """How many scans (SOS markers, FF DA) a JPEG's bytes hold, at most: entropy-coded data escapes
    every FF byte (FF 00) but for restart markers, so only a marker or the payload of another segment
    (an EXIF thumbnail) can spell it, and a decoder starts no scan that is not counted here."""
    return data.count(b"\xff\xda")


def decode_frame(
    data: bytes, check: Callable[[int, int], tuple[int, int] | None] | None = None
) -> np.ndarray:
    """One frame as uint8 RGB [H, W, 3], or ProtocolError: PNG or JPEG only, sized from its header first.

    `check(width, height)` may refuse the frame before any pixel is decoded; it returns the (height,
    width) to resize the frame to at once (the model's size: a JPEG several times larger is decoded
    at a half, a quarter or an eighth of its size, never below it), or None to keep its size. A JPEG
    with more than MAX_JPEG_SCANS scans is refused before decoding (each scan costs a pass over the
    whole image). Pillow's own decompression-bomb check stays on, behind the tighter MAX_FRAME_PIXELS.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=p.FRAME_FORMATS) as image:
            width, height = image.size
            if width * height > p.MAX_FRAME_PIXELS:
                raise p.ProtocolError(
                    p.CLOSE_TOO_BIG,
                    f"a frame of {width}x{height} is over the limit of {p.MAX_FRAME_PIXELS} pixels",
                )
            if image.format == "JPEG" and (scans := jpeg_scans(data)) > p.MAX_JPEG_SCANS:
                raise p.ProtocolError(
                    p.CLOSE_TOO_BIG,
                    f"a JPEG frame of {scans} scans is over the limit of {p.MAX_JPEG_SCANS}; "
                    "send baseline or ordinary progressive JPEG",
                )
            size = check(width, height) if check is not None else None
            if size is not None and image.format == "JPEG":
                image.draft(None, (size[1], size[0]))  # DCT scaling: the decoded image stays >= size
            rgb = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except p.ProtocolError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # the latter where warnings raise
        raise p.ProtocolError(
            p.CLOSE_TOO_BIG, f"a frame is over the limit of {p.MAX_FRAME_PIXELS} pixels"
        ) from None
    except UnidentifiedImageError:
        raise p.ProtocolError(p.CLOSE_UNSUPPORTED, "a frame is not a PNG or JPEG image") from None
    except Exception as exc:  # the decoder's only input is the client's bytes: a corrupt or truncated image
        raise p.ProtocolError(p.CLOSE_UNSUPPORTED, f"a frame could not be decoded ({exc})") from None
    return rgb if size is None else _to_size(rgb, size)


def _to_size(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`rgb` resized to (height, width) with the model's own resize (`core.frames`), so that
    `video_input` finds the chunk's frames at its size and the result is what it would have made of
    them at full size (torchvision's resize treats each frame of a batch alone)."""
    if rgb.shape[:2] == tuple(size):
        return rgb
    pixels = torch.from_numpy(rgb if rgb.flags.writeable else rgb.copy()).permute(2, 0, 1)[None]
    return _resize(pixels, *size)[0].permute(1, 2, 0).contiguous().numpy()


def raise_open_files_limit() -> int | None:
    """Raises this process's soft limit of open files to its hard limit (each connection is one), and
    returns the soft limit now (None where there is none to read: not a POSIX system)."""
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            log.info("open files limit raised from %d to %d", soft, want)
            soft = want
        except (ValueError, OSError) as exc:  # e.g. above the kernel's nr_open
            log.warning("could not raise the open files limit from %d to %d (%s)", soft, want, exc)
    return None if soft == resource.RLIM_INFINITY else soft


class _ConnectionLog(logging.LoggerAdapter):
    """websockets' logger with its line for each connection opened and closed at DEBUG: the server logs
    each connection's end itself (with the peer and the reason), refusals once per burst, and a flood of
    connections must not make two lines each."""

    def log(self, level, msg, *args, **kwargs) -> None:
        if level == logging.INFO and msg in ("connection open", "connection closed"):
            level = logging.DEBUG
        super().log(level, msg, *args, **kwargs)

    def process(self, msg, kwargs):  # the connection's own adapter sets `extra`: kept as it is
        return msg, kwargs


def chunk_timing(queue_s: float, total_s: float, stats: ChunkStats | None = None) -> dict[str, float]:
    """A `chunk_done`'s `timing`, in milliseconds: the wait for the model and arrival to done, and for a
    chunk the model ran, the session's split of its time (`ChunkStats`); a skipped chunk has no split."""
    stages = {name: float(getattr(stats, name)) for name in p.TIMING_STAGES} if stats is not None else {}
    queue_ms = queue_s * 1000 + float(getattr(stats, "queue_ms", 0.0))  # + the wait for the model thread
    timing = {"queue_ms": queue_ms, **stages, "total_ms": total_s * 1000}
    return {name: round(max(0.0, value), 3) for name, value in timing.items()}


def _host(ws: ServerConnection) -> str:
    """The peer's address without its port: what token guessing is counted by."""
    address = ws.remote_address
    return str(address[0]) if isinstance(address, tuple) and address else str(address)


def _peer(ws: ServerConnection) -> str:
    address = ws.remote_address
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) and len(address) >= 2 else str(address)


def _plain(config: object) -> dict:
    """A config dataclass as JSON values (enums as their values)."""
    return {
        name: value.value if isinstance(value, enum.Enum) else value
        for name, value in dataclasses.asdict(config).items()
    }
