"""The remote-inference wire protocol (version 1), shared by core/server.py and core/client.py.

docs/protocol.md is its description for people; this module is the one place its names, limits
and codes live in code. Messages are WebSocket text frames holding one JSON object with a
"type", except images, which are binary frames (PNG or JPEG) following a "chunk" message.
"""

from __future__ import annotations

import json
from typing import Any

VERSION = 1

# Limits a server enforces (and advertises in "ready").
MAX_TEXT_BYTES = 64 * 1024  # one JSON message
MAX_IMAGE_BYTES = 8 * 1024 * 1024  # one encoded frame
MAX_FRAME_PIXELS = 3840 * 2160  # a decoded frame
MAX_FRAMES_PER_CHUNK = 32

# Close codes (RFC 6455 ones where they fit, 4000-4999 for the application).
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003  # a message of the wrong kind (binary where text was due, ...)
CLOSE_POLICY = 1008  # missing or wrong token
CLOSE_TOO_BIG = 1009
CLOSE_BAD_VERSION = 4001
CLOSE_TOO_MANY_SESSIONS = 4002
CLOSE_IDLE = 4003
CLOSE_MALFORMED = 4004  # text that is not a valid message of this protocol
CLOSE_INTERNAL = 1011


class ProtocolError(Exception):
    """A message broke the protocol; `code` is the close code to send."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def encode(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))


def decode(text: str | bytes, expected: tuple[str, ...]) -> dict[str, Any]:
    """Parse one text message whose type must be one of `expected`; ProtocolError otherwise."""
    if isinstance(text, bytes):
        raise ProtocolError(
            CLOSE_UNSUPPORTED, f"expected a text message ({' or '.join(expected)}), got binary"
        )
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(CLOSE_MALFORMED, f"not JSON ({exc.msg} at {exc.pos})") from None
    if not isinstance(message, dict) or message.get("type") not in expected:
        got = message.get("type") if isinstance(message, dict) else type(message).__name__
        raise ProtocolError(
            CLOSE_MALFORMED, f"expected a message of type {' or '.join(expected)}, got {got!r}"
        )
    return message


def field(message: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """A field of the right type, or ProtocolError naming it."""
    if name not in message:
        if default is ...:
            raise ProtocolError(CLOSE_MALFORMED, f"'{message.get('type')}' needs the field '{name}'")
        return default
    value = message[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ProtocolError(CLOSE_MALFORMED, f"field '{name}' of '{message.get('type')}' has the wrong type")
    return value
