"""Remote inference: one model served over WebSocket to many clients (protocol: core/protocol.py).

`python -m core serve --model M` binds to loopback unless told otherwise, and refuses any other
address without a token; tokens are compared in constant time. Each connection is one session:
`hello` (version, token, instruction, previous text, seed) -> `ready`, then per chunk a `chunk`
message and its frames as binary PNG/JPEG messages -> `commentary` events and `chunk_done`.
Chunks from all sessions take turns on the model (one at a time); a chunk that waited longer
than the latency budget is skipped and reported as such (unless the model alone is slower than
the budget: then a chunk that waited behind at most one other is still answered). A message
that breaks the protocol or a limit closes its own connection with a code and a reason; the
server and the other sessions go on. Idle connections are closed after `idle_timeout` seconds.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import itertools
import logging
import threading
import time

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from core import protocol as p
from core.engine import DEFAULT_INSTRUCTION, StreamingEngine
from core.errors import ConfigError

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class InferenceServer:
    def __init__(
        self,
        engine: StreamingEngine,
        *,
        token: str | None = None,
        max_sessions: int = 4,
        idle_timeout: float = 60.0,
        budget: float = 2.0,
    ) -> None:
        self.engine, self.token = engine, token
        self.max_sessions, self.idle_timeout, self.budget = max_sessions, idle_timeout, budget
        self.sessions = 0
        self._ids = itertools.count(1)
        self._model_lock = asyncio.Lock()  # one chunk on the model at a time, sessions take turns
        self._seconds_per_chunk = 0.0
        self._warned_slow = False

    async def serve(self, host: str = "127.0.0.1", port: int = 8765, ssl=None) -> Server:
        if host not in LOOPBACK and not self.token:
            raise ConfigError(
                f"refusing to listen on {host} without a token; pass --token-file or bind to 127.0.0.1"
            )
        return await serve(self.handle, host, port, max_size=p.MAX_IMAGE_BYTES, ssl=ssl)

    async def handle(self, ws: ServerConnection) -> None:
        session = None
        try:
            hello = p.decode(await self._recv(ws), ("hello",))
            version = hello.get("version")
            if version != p.VERSION:
                raise p.ProtocolError(
                    p.CLOSE_BAD_VERSION,
                    f"this server speaks protocol {p.VERSION}, the client {version}; update the older side",
                )
            offered = p.field(hello, "token", str, "")
            if self.token and not hmac.compare_digest(offered.encode(), self.token.encode()):
                raise p.ProtocolError(p.CLOSE_POLICY, "missing or wrong token")
            if self.sessions >= self.max_sessions:
                raise p.ProtocolError(
                    p.CLOSE_TOO_MANY_SESSIONS,
                    f"the server is full ({self.max_sessions} sessions); try again later",
                )
            self.sessions += 1
            session = self.engine.start(
                instruction=p.field(hello, "instruction", (str, type(None)), DEFAULT_INSTRUCTION),
                previous_text=p.field(hello, "previous_text", str, ""),
                seed=p.field(hello, "seed", (int, type(None)), None),
            )
            number = next(self._ids)
            await ws.send(
                p.encode("ready", version=p.VERSION, session=number, max_image_bytes=p.MAX_IMAGE_BYTES)
            )
            log.info("session %d opened from %s", number, ws.remote_address)
            while True:
                await self._chunk(ws, session)
        except p.ProtocolError as exc:
            log.info("closing a connection: %s", exc.reason)
            await ws.close(exc.code, exc.reason)
        except TimeoutError:
            await ws.close(p.CLOSE_IDLE, f"idle for {self.idle_timeout:.0f} s")
        except ConnectionClosed:
            pass
        finally:
            if session is not None:
                session.close()
                self.sessions -= 1

    async def _recv(self, ws: ServerConnection) -> str | bytes:
        return await asyncio.wait_for(ws.recv(), self.idle_timeout)

    async def _chunk(self, ws: ServerConnection, session) -> None:
        header = p.decode(await self._recv(ws), ("chunk",))
        t_start, t_end = p.field(header, "t_start", float), p.field(header, "t_end", float)
        count = p.field(header, "frames", int)
        if not 1 <= count <= p.MAX_FRAMES_PER_CHUNK:
            raise p.ProtocolError(
                p.CLOSE_MALFORMED, f"a chunk has 1 to {p.MAX_FRAMES_PER_CHUNK} frames, not {count}"
            )
        frames = [_image(await self._recv(ws)) for _ in range(count)]
        arrived = time.monotonic()
        async with self._model_lock:
            waited = time.monotonic() - arrived
            predicted = self._seconds_per_chunk
            # A model slower than the budget misses it on every chunk; a chunk that waited behind at
            # most one other is then still answered (about two chunk-times late), not skipped forever.
            slower_than_budget = predicted > self.budget and waited < predicted
            if slower_than_budget and not self._warned_slow:
                self._warned_slow = True
                log.warning(
                    "a chunk takes about %.2f s, more than the %.2f s latency budget; raise --latency-budget",
                    predicted,
                    self.budget,
                )
            if waited + predicted > self.budget and not slower_than_budget:
                await ws.send(
                    p.encode("chunk_done", t_start=t_start, t_end=t_end, skipped=True, latency=waited)
                )
                return
            started = time.monotonic()
            try:
                events = await asyncio.to_thread(session.push, frames, t_start, t_end)
            except ValueError as exc:  # times that go backwards, and the like
                raise p.ProtocolError(p.CLOSE_MALFORMED, str(exc)) from None
            took = time.monotonic() - started
            self._seconds_per_chunk = (
                took if not self._seconds_per_chunk else 0.7 * self._seconds_per_chunk + 0.3 * took
            )
        for event in events:
            await ws.send(p.encode("commentary", start=event.start, end=event.end, text=event.text))
        await ws.send(
            p.encode(
                "chunk_done", t_start=t_start, t_end=t_end, skipped=False, latency=time.monotonic() - arrived
            )
        )


class ServerThread:
    """An `InferenceServer` on a loopback port, its event loop in a thread of its own (tests, load runs)."""

    def __init__(self, server: InferenceServer, port: int = 0) -> None:
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
            self.ws_server.close()
            await self.ws_server.wait_closed()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


def _image(data: str | bytes) -> np.ndarray:
    if isinstance(data, str):
        raise p.ProtocolError(p.CLOSE_UNSUPPORTED, "expected a frame (a binary PNG or JPEG), got text")
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > p.MAX_FRAME_PIXELS:
            raise p.ProtocolError(
                p.CLOSE_TOO_BIG, f"a frame of {image.width}x{image.height} is over the limit"
            )
        return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError):
        raise p.ProtocolError(p.CLOSE_UNSUPPORTED, "a frame is not a PNG or JPEG image") from None
