"""`RemoteSession`: the `Session` interface over WebSocket, so the CLI and the GUI need not know
where the model runs (protocol: core/protocol.py; server: core/server.py)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from contextlib import ExitStack

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidURI
from websockets.sync.client import connect

from core import protocol as p
from core.errors import StreamVLMError
from core.types import Closeable, Commentary, Frame

DEFAULT = "<the engine's default instruction>"


class RemoteSession(Closeable):
    """One stream on a remote server: `push(frames, t_start, t_end)` returns that chunk's commentary."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        instruction: str | None = DEFAULT,
        previous_text: str = "",
        seed: int | None = None,
        image_format: str = "png",
        timeout: float = 30.0,
    ) -> None:
        if image_format not in ("png", "jpeg"):
            raise ValueError(f"image_format must be png or jpeg (got {image_format!r})")
        self.url, self.image_format, self.timeout = url, image_format, timeout
        self.last_latency: float | None = None
        self.skipped = 0
        self._stack = ExitStack()  # the connection is a context manager; the session closes it
        try:
            self._ws = self._stack.enter_context(
                connect(url, open_timeout=timeout, max_size=p.MAX_TEXT_BYTES)
            )
        except (OSError, InvalidURI, TimeoutError) as exc:
            raise StreamVLMError(
                f"cannot reach the server at {url} ({exc}); check the URL and that it runs"
            ) from None
        hello = {"version": p.VERSION, "previous_text": previous_text, "seed": seed}
        if instruction is not DEFAULT:  # left out: the server's default instruction, as a local Session
            hello["instruction"] = instruction
        if token:
            hello["token"] = token
        try:
            self._ws.send(p.encode("hello", **hello))
            ready = p.decode(self._recv(), ("ready",))
        except BaseException:
            self._stack.close()
            raise
        self.session_id = ready["session"]

    def push(self, frames: Sequence[np.ndarray | Frame], t_start: float, t_end: float) -> list[Commentary]:
        arrays = [f.rgb if isinstance(f, Frame) else f for f in frames]
        self._send(p.encode("chunk", t_start=t_start, t_end=t_end, frames=len(arrays)))
        for rgb in arrays:
            self._send(_encode_image(rgb, self.image_format))
        events = []
        while True:
            message = p.decode(self._recv(), ("commentary", "chunk_done"))
            if message["type"] == "commentary":
                events.append(Commentary(message["start"], message["end"], message["text"]))
                continue
            self.last_latency = message["latency"]
            self.skipped += bool(message["skipped"])
            return events

    def close(self) -> None:
        self._stack.close()

    def _send(self, message: str | bytes) -> None:
        try:
            self._ws.send(message)
        except ConnectionClosed as exc:
            raise self._closed(exc) from None

    def _recv(self) -> str | bytes:
        try:
            return self._ws.recv(timeout=self.timeout)
        except ConnectionClosed as exc:
            raise self._closed(exc) from None
        except TimeoutError:
            raise StreamVLMError(
                f"the server at {self.url} did not answer for {self.timeout:.0f} s"
            ) from None

    def _closed(self, exc: ConnectionClosed) -> StreamVLMError:
        close = exc.rcvd
        reason = f"{close.reason} (code {close.code})" if close else "the connection dropped"
        return StreamVLMError(f"the server at {self.url} closed the session: {reason}")


def _encode_image(rgb: np.ndarray, image_format: str) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(
        buffer, format=image_format.upper(), **({"quality": 90} if image_format == "jpeg" else {})
    )
    return buffer.getvalue()
