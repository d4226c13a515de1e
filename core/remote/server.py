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
first, on threads: the event loop never decodes. A session slot is held from a valid hello
until that session closes, on every path. Idle connections are closed after `idle_timeout`
seconds. Each session's open and close are logged with the peer and the reason. A wrong token is
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
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from core.chunk_guard import GuardedSession
from core.conversation import QuestionError
from core.engine import DEFAULT_INSTRUCTION, ChunkStats, Session, StreamingEngine
from core.errors import ConfigError, SourceError, StreamVLMError
from core.frames import target_size
from core.latency import LatencyBudget
from core.pool import CapacityError
from core.remote import protocol as p
from core.remote.guard import TokenGuard

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "localhost", "::1")
CLOSE_GOING_AWAY = 1001  # RFC 6455's code for a server going down
SHUTDOWN_REASON = "server shutting down"


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
        await self.ws.close(code, reason)

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
    ) -> None:
        self.engine, self.token = engine, token
        self.replica = replica  # a cluster replica's id, told to clients in "ready" (None: a single server)
        # An engine with a cache pool carries as many sessions as it has slots (its memory decides).
        self.max_sessions = engine.pool.slots if engine.pool is not None else max_sessions
        self.idle_timeout = idle_timeout
        self.guard = TokenGuard()  # wrong tokens from one address: refused ever more slowly
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
        # the model's chunks run on. One per session slot: a session decodes one frame at a time, so
        # no session's frame waits behind another session's slow one.
        self._decoder = ThreadPoolExecutor(max(1, self.max_sessions), thread_name_prefix="frame-decoder")
        # What every session here runs with, told to clients in "ready" (a client must send `fps` frames
        # a second), as plain JSON values.
        self._settings = {
            "stream": _plain(engine.stream),
            "cache": _plain(engine.cache_policy),
            "generation": _plain(engine.generation),
        }

    async def serve(self, host: str = "127.0.0.1", port: int = 8765, ssl=None) -> Server:
        check_exposure(host, self.token)
        # The largest message is a frame (the library refuses a larger one, 1009, before buffering it);
        # text messages are held to MAX_TEXT_BYTES by p.decode.
        return await serve(self.handle, host, port, max_size=p.MAX_IMAGE_BYTES, ssl=ssl)

    async def handle(self, ws: ServerConnection) -> None:
        """The WebSocket server's handler: one connection, one session (`run_session`)."""
        await self.run_session(WebsocketsConnection(ws))

    async def run_session(self, conn: Connection) -> None:
        """One connection, one session: whatever ends it, its slot is freed and the close is logged."""
        name = f"connection from {conn.peer}"
        try:
            hello = p.decode(await self._recv(conn), ("hello",))
            if not self._admit(hello):  # a wrong token: refused after the guard's wait, logged by it
                await self.guard.refuse(conn.host, conn.wait_closed())
                await conn.close(p.CLOSE_POLICY, "missing or wrong token")
                return
            with self._slot():
                session = await self._start(hello)
                try:
                    number = next(self._ids)
                    name = f"session {number} ({conn.peer})"
                    # Old clients ignore `replica`, which only a cluster's replicas send.
                    where = {"replica": self.replica} if self.replica is not None else {}
                    await conn.send(
                        p.encode(
                            "ready",
                            version=p.VERSION,
                            session=number,
                            max_image_bytes=p.MAX_IMAGE_BYTES,
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

    async def _recv(self, conn: Connection) -> str | bytes:
        try:
            message = await asyncio.wait_for(conn.recv(), self.idle_timeout)
        except TimeoutError:
            raise p.ProtocolError(p.CLOSE_IDLE, f"idle for {self.idle_timeout:.0f} s") from None
        # The largest message is a frame. The `websockets` transport refuses a larger one itself; a
        # transport that hands over whatever came (an ASGI proxy's, up to its own limit) is held to it here.
        if isinstance(message, bytes) and len(message) > p.MAX_IMAGE_BYTES:
            raise p.ProtocolError(
                p.CLOSE_TOO_BIG,
                f"a message of {len(message)} bytes is over the limit of {p.MAX_IMAGE_BYTES} bytes",
            )
        return message

    async def _frame(self, data: str | bytes) -> np.ndarray:
        if isinstance(data, str):
            raise p.ProtocolError(p.CLOSE_UNSUPPORTED, "expected a frame (a binary PNG or JPEG), got text")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._decoder, decode_frame, data, self._usable)

    def _usable(self, width: int, height: int) -> None:
        """Refuses a frame this engine cannot resize (the model's aspect-ratio limit), before decoding it."""
        try:
            target_size(height, width, self.engine.stream, self.engine.model.vision)
        except SourceError as exc:
            raise p.ProtocolError(p.CLOSE_UNSUPPORTED, str(exc)) from None

    async def _frames(self, conn: Connection, count: int) -> list:
        """A chunk's `count` frames, each decoded (off the event loop) while the next one arrives; the
        first bad frame's error, as soon as it is known, closes the connection."""
        decoding: list[asyncio.Future] = []
        try:
            for _ in range(count):
                data = await self._recv(conn)
                for task in decoding:
                    if task.done():
                        task.result()  # raises a bad frame's ProtocolError now
                decoding.append(asyncio.ensure_future(self._frame(data)))
            return list(await asyncio.gather(*decoding))
        finally:
            for task in decoding:  # on an error: the others stop, and none is left unretrieved
                task.cancel()
                if task.done() and not task.cancelled():
                    task.exception()

    async def _chunk(self, conn: Connection, session: Session) -> None:
        message = p.decode(await self._recv(conn), ("chunk", "question"))
        if message["type"] == "question":
            await self._ask(conn, session, p.question_text(message))
            return
        t_start, t_end, count = p.chunk_header(message)
        frames = await self._frames(conn, count)
        arrived = time.monotonic()
        async with self._model_lock:
            started = time.monotonic()
            waited = started - arrived
            # A session sends its next chunk only after this one is done, so each chunk is its stream's
            # newest; one that waited behind at most one other session's chunk still counts as fresh.
            if not self.latency.allows(waited, newest=waited < self.latency.seconds_per_chunk):
                await self._done(conn, t_start, t_end, arrived, waited, skipped=True)
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
            conn, t_start, t_end, arrived, waited, skipped=False, stats=stats, failed=guarded.last_failure
        )

    async def _ask(self, conn: Connection, session: Session, text: str) -> None:
        """Queue a question for the session's next chunk. One the session cannot ask (too long: the
        client cannot count the model's tokens) is answered with `question_refused` and the stream goes
        on; a malformed question message has already closed the connection (`p.question_text`)."""
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
        """The chunk's `chunk_done`, with the latency and the server's `timing` of it, and `failed` (why)
        for a chunk that failed on the server (out of GPU memory)."""
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


def decode_frame(data: bytes, check: Callable[[int, int], None] | None = None) -> np.ndarray:
    """One frame as uint8 RGB [H, W, 3], or ProtocolError: PNG or JPEG only, sized from its header first.

    `check(width, height)` may refuse the frame before any pixel is decoded. Pillow's own
    decompression-bomb check stays on, behind the tighter MAX_FRAME_PIXELS.
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
            if check is not None:
                check(width, height)
            return np.asarray(image.convert("RGB"))
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
