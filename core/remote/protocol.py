"""The remote-inference wire protocol (version 2: questions), shared by core/remote/server.py and core/remote/client.py.

docs/protocol.md is its description for people; this module is the one place its names, limits
and codes live in code. Messages are WebSocket text frames holding one JSON object with a
"type", except images, which are binary frames (PNG or JPEG) following a "chunk" message.
Every check of a message's text and numbers is here, so the server and the client agree on them.
"""

from __future__ import annotations

import json
import math
from typing import Any

VERSION = 2  # 2: the "question" message, and answers as "commentary" with a "question" field

# Limits a server enforces (it advertises max_image_bytes in "ready").
MAX_TEXT_BYTES = 64 * 1024  # one JSON message, UTF-8 encoded
MAX_IMAGE_BYTES = 8 * 1024 * 1024  # one encoded frame
MAX_FRAME_PIXELS = 3840 * 2160  # a decoded frame
MAX_FRAMES_PER_CHUNK = 32
# A JPEG's scans (SOS markers): each scan walks every block of the image again, however few its bytes
# (a 4K frame: about 5 ms a scan on one core), so a frame of a few hundred bytes per scan repeated
# thousands of times cost seconds of decoding. libjpeg's progressive script writes 10 scans (6 for
# grayscale), a baseline JPEG 1 (3 when not interleaved); 32 leaves room for other encoders' scripts and
# holds a frame's decoding to a few times an ordinary progressive one of its size. Counted in the bytes
# before decoding (`core.remote.server.jpeg_scans`).
MAX_JPEG_SCANS = 32
# Questions a session holds that no chunk has asked yet. A chunk asks one, so a fourth waits four chunks
# for its answer; more would only be answered later still (and a flood of them grew without bound).
MAX_QUESTIONS_WAITING = 4
# Chunk times are stream seconds; a year of stream is far more than any session lasts, and the bound
# keeps the times the model reads ("Time=12.0-13.0s") short.
MAX_STREAM_SECONDS = 366 * 24 * 3600.0
# The only image formats a frame is decoded as (Pillow's names): other decoders are never reached,
# so no frame can make Pillow hand its bytes to an external program (Ghostscript for EPS).
FRAME_FORMATS = ("PNG", "JPEG")

# The model's stages a `chunk_done`'s `timing` splits a chunk into (milliseconds, `core.engine.ChunkStats`'s
# names), between its `queue_ms` (arrival to the model starting on it) and `total_ms` (arrival to done). A
# chunk arrives with its header: receiving and decoding its frames count in both, and in its `latency`.
TIMING_STAGES = ("vision_ms", "evict_ms", "prefill_ms", "decode_ms")

# Close codes (RFC 6455 ones where they fit, 4000-4999 for the application).
CLOSE_UNSUPPORTED = 1003  # a message of the wrong kind (binary where text was due, ...) or an unusable frame
CLOSE_POLICY = 1008  # missing or wrong token
CLOSE_TOO_BIG = 1009
CLOSE_BAD_VERSION = 4001
CLOSE_TOO_MANY_SESSIONS = 4002  # the server is full: no session slot, or too many connections (retry later)
CLOSE_IDLE = 4003
CLOSE_MALFORMED = 4004  # text that is not a valid message of this protocol
CLOSE_INTERNAL = 1011
MAX_REASON_BYTES = 123  # RFC 6455: a close frame's reason, UTF-8


class ProtocolError(Exception):
    """A message broke the protocol; `code` is the close code to send."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code, self.reason = code, reason


def encode(kind: str, **fields: Any) -> str:
    # ensure_ascii=False: the size limits count UTF-8 bytes, and \uXXXX escapes would triple them.
    return json.dumps({"type": kind, **fields}, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def decode(text: str | bytes, expected: tuple[str, ...]) -> dict[str, Any]:
    """Parse one text message whose type must be one of `expected`; ProtocolError otherwise."""
    if isinstance(text, bytes):
        raise ProtocolError(
            CLOSE_UNSUPPORTED, f"expected a text message ({' or '.join(expected)}), got binary"
        )
    # Checked before parsing: a text of megabytes must cost neither time nor memory to refuse.
    if len(text) > MAX_TEXT_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_TEXT_BYTES:
        raise ProtocolError(
            CLOSE_TOO_BIG, f"a text message over the limit of {MAX_TEXT_BYTES} bytes ({len(text)} characters)"
        )
    try:
        message = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ProtocolError(CLOSE_MALFORMED, f"not JSON ({exc.msg} at {exc.pos})") from None
    except (ValueError, RecursionError) as exc:  # an integer of thousands of digits; nesting too deep
        raise ProtocolError(CLOSE_MALFORMED, f"not a JSON message this protocol accepts ({exc})") from None
    if not isinstance(message, dict) or message.get("type") not in expected:
        got = message.get("type") if isinstance(message, dict) else type(message).__name__
        raise ProtocolError(
            CLOSE_MALFORMED, f"expected a message of type {' or '.join(expected)}, got {show(got)}"
        )
    return message


def field(
    message: dict[str, Any],
    name: str,
    kind: type | tuple[type, ...],
    default: Any = ...,
    *,
    low: float | None = None,
    high: float | None = None,
) -> Any:
    """A field of the right type (numbers finite, within [low, high] when given), or ProtocolError naming it."""
    kind_name = show(message.get("type"))
    where = f"field '{name}' of {kind_name}"
    if name not in message:
        if default is ...:
            raise ProtocolError(CLOSE_MALFORMED, f"{kind_name} needs the field '{name}'")
        return default
    value = message[name]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:  # an integer past float's range
            raise ProtocolError(CLOSE_MALFORMED, f"{where} is out of range (got {show(value)})") from None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ProtocolError(CLOSE_MALFORMED, f"{where} has the wrong type")
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # JSON can spell lone surrogates ("\ud800"), which no text has
            raise ProtocolError(CLOSE_MALFORMED, f"{where} is not valid Unicode text") from None
    if isinstance(value, float) and not math.isfinite(value):  # 1e400 parses as inf
        raise ProtocolError(CLOSE_MALFORMED, f"{where} must be a finite number (got {value})")
    if value is not None and not ((low is None or value >= low) and (high is None or value <= high)):
        raise ProtocolError(
            CLOSE_MALFORMED, f"{where} must be between {show(low)} and {show(high)} (got {show(value)})"
        )
    return value


def chunk_header(message: dict[str, Any]) -> tuple[float, float, int]:
    """(t_start, t_end, frames) of a "chunk" message: finite times in [0, MAX_STREAM_SECONDS], in order."""
    t_start = field(message, "t_start", float, low=0.0, high=MAX_STREAM_SECONDS)
    t_end = field(message, "t_end", float, low=0.0, high=MAX_STREAM_SECONDS)
    if not t_end > t_start:
        raise ProtocolError(CLOSE_MALFORMED, f"a chunk must end after it starts (got {t_start} to {t_end})")
    return t_start, t_end, field(message, "frames", int, low=1, high=MAX_FRAMES_PER_CHUNK)


def question_text(message: dict[str, Any]) -> str:
    """The text of a "question" message (the engine then checks it is one it can ask)."""
    return field(message, "text", str)


def answer_question(message: dict[str, Any]) -> str | None:
    """The question a "commentary" message answers (None: it is commentary, not an answer)."""
    return field(message, "question", (str, type(None)), None)


def ready_limit(message: dict[str, Any], name: str, default: int | None = None) -> int | None:
    """An optional limit of a "ready" (`max_frames_per_chunk`, `max_chunk_vision_tokens`, ...): a positive
    integer, or `default` when the server did not send it (an older one) or sent something else."""
    value = message.get(name)
    return value if type(value) is int and value > 0 else default


def ready_replica(message: dict[str, Any]) -> str | None:
    """Which replica of a cluster a "ready" came from (its optional `replica` field; None from a single
    server). Only a label for reports: a value of another type is ignored, as an unknown field would be."""
    value = message.get("replica")
    return value if isinstance(value, str) else None


def close_reason(reason: str) -> str:
    """`reason` cut to what a close frame carries (123 bytes of UTF-8), never mid-character."""
    data = reason.encode("utf-8", "replace")
    if len(data) <= MAX_REASON_BYTES:
        return reason
    return data[: MAX_REASON_BYTES - 3].decode("utf-8", "ignore") + "..."


def show(value: Any, limit: int = 24) -> str:
    """A client's value quoted in a reason, short: a reason must fit a close frame."""
    text = repr(value) if not isinstance(value, int | float) or isinstance(value, bool) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")
