"""Hostile and broken clients against the real server on loopback (tiny model): each bad message closes
its own connection with its specific code and a reason, frees its session slot, runs no decoder but
PNG's and JPEG's (never one that starts a program), and never stalls or harms another client."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import struct
import subprocess
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conftest import SMALL_STREAM, random_frames
from core.engine import Session, StreamingEngine
from core.errors import StreamVLMError
from core.media.reconnect import Backoff
from core.remote import protocol as p
from core.remote.client import RemoteSession, ServerLost
from core.remote.server import InferenceServer, ServerThread
from serverhelpers import GREEDY, RunningServer, no_sessions_left

TOKEN = "s3cret"
QUICK = Backoff(initial=0.05, cap=0.1, give_up_after=5.0)


class CountingServer(InferenceServer):
    """Counts the connections it was handed: a client that retries shows up here."""

    connections = 0

    async def handle(self, ws) -> None:
        self.connections += 1
        await super().handle(ws)


@pytest.fixture
def server(tiny_model):
    engine = StreamingEngine(tiny_model, stream=SMALL_STREAM, generation=GREEDY)
    running = RunningServer(engine, token=TOKEN, max_sessions=2, budget=30.0)
    yield running
    running.stop()


class RunningCountingServer(ServerThread):
    def __init__(self, engine: StreamingEngine, **options) -> None:
        self.server = CountingServer(engine, **options)
        super().__init__(self.server)


@pytest.fixture
def counting(tiny_model):
    engine = StreamingEngine(tiny_model, stream=SMALL_STREAM, generation=GREEDY)
    running = RunningCountingServer(engine, max_sessions=2, budget=30.0)
    yield running
    running.stop()


def hello(**fields) -> str:
    return p.encode("hello", **{"version": p.VERSION, "token": TOKEN, **fields})


def close_of(server, *messages: str | bytes, session: bool = True):
    """Open a connection (with a session unless told otherwise), send `messages`, return the server's close."""
    with connect(server.url, max_size=None, open_timeout=10) as ws:
        try:
            if session:
                ws.send(hello())
                p.decode(ws.recv(timeout=10), ("ready",))
            for message in messages:
                ws.send(message)
            while True:  # anything but a close (a chunk_done, say) is the bug this file looks for
                ws.recv(timeout=10)
        except ConnectionClosed as closed:
            return closed.rcvd


def assert_closed(close, code: int, words: str = "") -> None:
    assert close is not None, "the server dropped the connection without a close frame"
    assert (close.code, words in close.reason) == (code, True), close
    assert close.reason and len(close.reason.encode()) <= 123  # RFC 6455: what a close frame carries


def encoded(image_format: str, size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, image_format)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with almost no pixel data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def chunk(frames: int = 1, t_start: float = 0.0, t_end: float = 1.0) -> str:
    return p.encode("chunk", t_start=t_start, t_end=t_end, frames=frames)


BAD_HELLOS = [
    (hello(seed=2**80), p.CLOSE_MALFORMED),
    (hello(seed=-(2**70)), p.CLOSE_MALFORMED),
    (hello(seed=int("9" * 4000)), p.CLOSE_MALFORMED),
    (hello(seed="7"), p.CLOSE_MALFORMED),
    (hello(seed=1.5), p.CLOSE_MALFORMED),
    (hello(instruction=5), p.CLOSE_MALFORMED),
    (hello(previous_text=["a"]), p.CLOSE_MALFORMED),
    (hello(token=5), p.CLOSE_MALFORMED),
    (hello()[:-1] + ',"seed":NaN}', p.CLOSE_MALFORMED),
    (hello()[:-1] + ',"seed":' + "1" * 5000 + "}", p.CLOSE_MALFORMED),  # past Python's int-digit limit
    (hello()[:-1] + ',"previous_text":"\\ud800"}', p.CLOSE_MALFORMED),  # a lone surrogate
    (hello()[:-1] + ',"token":"\\udfff"}', p.CLOSE_MALFORMED),
    ("[" * 60_000, p.CLOSE_MALFORMED),  # nesting deeper than the parser's recursion
    (hello(version="1"), p.CLOSE_BAD_VERSION),
    (hello(version=True), p.CLOSE_BAD_VERSION),
    (hello(version="v" * 1000), p.CLOSE_BAD_VERSION),  # the reason quoting it must still fit a close frame
    (hello(token="wrong"), p.CLOSE_POLICY),
    (hello(previous_text="x" * p.MAX_TEXT_BYTES), p.CLOSE_TOO_BIG),
    (hello().encode(), p.CLOSE_UNSUPPORTED),  # binary
]


def test_bad_hellos_keep_no_session_slot_and_harm_no_one(server):
    rng = np.random.default_rng(0)
    with RemoteSession(server.url, token=TOKEN) as steady:
        steady.push(random_frames(rng, 56, 56), 0, 1)
        for message, code in BAD_HELLOS * 2:  # twice as many as there are slots
            assert_closed(close_of(server, message, session=False), code)
        steady.push(random_frames(rng, 56, 56), 1, 2)  # the other client's stream went on
        assert server.server.sessions == 1
        with RemoteSession(server.url, token=TOKEN) as second:  # and the last slot is free
            second.push(random_frames(rng, 56, 56), 0, 1)
    assert no_sessions_left(server)


def test_concurrent_hellos_never_get_more_sessions_than_slots(server):
    with contextlib.ExitStack() as stack:
        connections = [stack.enter_context(connect(server.url, open_timeout=10)) for _ in range(6)]
        for ws in connections:
            ws.send(hello())
        outcomes = []
        for ws in connections:
            try:
                outcomes.append(p.decode(ws.recv(timeout=10), ("ready",))["type"])
            except ConnectionClosed as closed:
                outcomes.append(closed.rcvd.code)
    assert sorted(outcomes, key=str) == sorted(["ready"] * 2 + [p.CLOSE_TOO_MANY_SESSIONS] * 4, key=str)
    assert no_sessions_left(server)


@pytest.fixture
def no_programs(monkeypatch):
    """Records (and refuses) every program started in this process, the server's threads included."""
    started: list = []

    def refuse(args, *rest, **options):
        started.append(args)
        raise OSError("tests run no programs")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    return started


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n0 0 moveto showpage\n"


@pytest.mark.parametrize(
    "data",
    [
        EPS,
        b"%!PS-Adobe-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n",
        b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
        *(encoded(kind) for kind in ("GIF", "TIFF", "BMP", "WEBP", "PPM", "TGA", "ICO")),
        b"\x89PNG\r\n\x1a\n" + b"\0" * 40,  # PNG's signature, then garbage
        encoded("PNG")[:-30],  # a truncated PNG
        encoded("JPEG")[:40],  # a truncated JPEG
    ],
    ids=[
        "eps",
        "ps",
        "pdf",
        "gif",
        "tiff",
        "bmp",
        "webp",
        "ppm",
        "tga",
        "ico",
        "png-garbage",
        "png-cut",
        "jpeg-cut",
    ],
)
def test_frames_other_than_png_or_jpeg_are_refused_and_run_nothing(server, no_programs, data):
    assert_closed(close_of(server, chunk(), data), p.CLOSE_UNSUPPORTED)
    assert no_programs == []  # Pillow hands EPS to Ghostscript: that decoder must never be reached
    assert no_sessions_left(server)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's, then ours
@pytest.mark.parametrize(
    "size", [(100_000, 100_000), (10_000, 10_000), (3841, 2160), (1, p.MAX_FRAME_PIXELS + 1)]
)
def test_frames_over_the_pixel_limit_are_refused_from_their_header(server, size):
    assert_closed(close_of(server, chunk(), png_claiming(*size)), p.CLOSE_TOO_BIG, "over the limit")


@pytest.mark.parametrize("size", [(1, 4000), (4000, 1), (2, 500), (3000, 10)])
def test_frames_of_an_aspect_ratio_the_model_cannot_take_are_refused(server, size):
    assert_closed(close_of(server, chunk(), encoded("PNG", size)), p.CLOSE_UNSUPPORTED, "aspect ratio")
    assert no_sessions_left(server)


def test_a_wide_frame_within_the_models_aspect_ratio_is_answered(server):
    with RemoteSession(server.url, token=TOKEN) as session:  # 100:1, small max_pixels: one patch high
        session.push([np.full((10, 1000, 3), 90, np.uint8)] * 2, 0, 1)
        session.push(random_frames(np.random.default_rng(0), 56, 56), 1, 2)


@pytest.mark.parametrize(
    "header, words",
    [
        ('{"type":"chunk","t_start":NaN,"t_end":1,"frames":1}', "NaN"),
        ('{"type":"chunk","t_start":0,"t_end":Infinity,"frames":1}', "Infinity"),
        ('{"type":"chunk","t_start":-Infinity,"t_end":1,"frames":1}', "Infinity"),
        ('{"type":"chunk","t_start":0,"t_end":1e400,"frames":1}', "finite"),
        ('{"type":"chunk","t_start":0,"t_end":1' + "0" * 400 + ',"frames":1}', "out of range"),
        ('{"type":"chunk","t_start":0,"t_end":1e12,"frames":1}', "between"),
        ('{"type":"chunk","t_start":-1,"t_end":1,"frames":1}', "between"),
        ('{"type":"chunk","t_start":2,"t_end":1,"frames":1}', "end after it starts"),
        ('{"type":"chunk","t_start":1,"t_end":1,"frames":1}', "end after it starts"),
        ('{"type":"chunk","t_start":0,"t_end":1,"frames":0}', "between 1 and 32"),
        ('{"type":"chunk","t_start":0,"t_end":1,"frames":1000000000000000000000000000000}', "between"),
        ('{"type":"chunk","t_start":0,"t_end":1,"frames":' + "9" * 4000 + "}", "between"),
        ('{"type":"chunk","t_start":0,"t_end":1,"frames":' + "9" * 5000 + "}", "not a JSON message"),
        ('{"type":"chunk","t_start":0,"t_end":1,"frames":1.0}', "wrong type"),
        ('{"type":"chunk","t_start":0,"t_end":1,"frames":true}', "wrong type"),
        ('{"type":"chunk","t_start":"0","t_end":1,"frames":1}', "wrong type"),
        ('{"type":"chunk","t_end":1,"frames":1}', "needs the field 't_start'"),
        ('{"type":"' + "c" * 500 + '"}', "expected a message of type chunk"),
    ],
    ids=lambda value: value if len(value) < 30 else f"{value[:20]}...{value[-8:]}",
)
def test_chunk_headers_with_bad_numbers_close_with_a_reason(server, header, words):
    assert_closed(close_of(server, header), p.CLOSE_MALFORMED, words)
    assert no_sessions_left(server)


def test_times_going_back_across_chunks_close_with_a_reason(server):
    frame = encoded("PNG", (56, 56))
    close = close_of(server, chunk(t_start=5, t_end=6), frame, chunk(t_start=1, t_end=2), frame)
    assert_closed(close, p.CLOSE_MALFORMED, "move forward in time")


def test_text_over_the_limit_is_refused_before_it_is_parsed(server, monkeypatch):
    parsed: list[int] = []
    loads = json.loads
    monkeypatch.setattr(json, "loads", lambda text, **kw: parsed.append(len(text)) or loads(text, **kw))
    big_hello = hello(previous_text="é" * (p.MAX_TEXT_BYTES // 2))  # under the limit in characters
    assert_closed(close_of(server, big_hello, session=False), p.CLOSE_TOO_BIG, "over the limit")
    assert_closed(close_of(server, "{" * (4 * 1024 * 1024)), p.CLOSE_TOO_BIG, "over the limit")
    assert_closed(close_of(server, chunk()[:-1] + ',"x":"' + "y" * p.MAX_TEXT_BYTES + '"}'), p.CLOSE_TOO_BIG)
    assert max(parsed, default=0) <= p.MAX_TEXT_BYTES
    assert no_sessions_left(server)


def test_frames_are_decoded_off_the_event_loop(server, monkeypatch):
    """A frame whose decoding hangs must not hold up another client (no timing: the decode waits for
    the other client's answer, which only comes if the event loop is free)."""
    slow = encoded("PNG", (64, 48))
    decoding, release = threading.Event(), threading.Event()
    seen: dict = {}
    open_image = Image.open

    def hanging_open(fp, *args, **kwargs):
        data = fp.getvalue() if isinstance(fp, io.BytesIO) else b""
        if data == slow:
            seen["thread"] = threading.current_thread()
            decoding.set()
            seen["released"] = release.wait(20)
        return open_image(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", hanging_open)
    with connect(server.url, open_timeout=10) as stuck:
        stuck.send(hello())
        p.decode(stuck.recv(timeout=10), ("ready",))
        stuck.send(chunk())
        stuck.send(slow)
        assert decoding.wait(10)
        with RemoteSession(server.url, token=TOKEN, timeout=30) as other:
            other.push(random_frames(np.random.default_rng(0), 56, 56), 0, 1)
        release.set()
        assert p.decode(stuck.recv(timeout=30), ("commentary", "chunk_done"))
    assert seen["released"], "the other client was answered only after the hanging decode gave up"
    assert seen["thread"] is not server.thread


def test_the_client_does_not_retry_what_the_server_rejected(counting):
    url = counting.url
    cases = [
        ([np.zeros((1, 4000, 3), np.uint8)], "code 1003"),  # aspect ratio
        ([np.zeros((2200, 3840, 3), np.uint8)], "code 1009"),  # over the pixel limit
    ]
    for frames, words in cases:
        before = counting.server.connections
        with RemoteSession(url, reconnect=QUICK) as session:
            with pytest.raises(StreamVLMError, match=words) as refused:
                session.push(frames, 0, 1)
        assert not isinstance(refused.value, ServerLost) and counting.server.connections == before + 1
    before = counting.server.connections
    with RemoteSession(url, reconnect=QUICK) as session:
        frames = random_frames(np.random.default_rng(0), 56, 56)
        session.push(frames, 5, 6)
        with pytest.raises(StreamVLMError, match="move forward in time.*code 4004"):
            session.push(frames, 1, 2)
    assert counting.server.connections == before + 1
    assert no_sessions_left(counting)


def test_a_server_failure_is_retried_once_per_chunk_with_a_reason(counting, monkeypatch, caplog):
    push = Session.push
    failures = {"left": 10**9}

    def failing(self, *args, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("a bug of the server's")
        return push(self, *args, **kwargs)

    monkeypatch.setattr(Session, "push", failing)
    frames = random_frames(np.random.default_rng(0), 56, 56)
    with caplog.at_level(logging.INFO, logger="core.remote.server"):
        with RemoteSession(counting.url, reconnect=QUICK) as session:
            with pytest.raises(ServerLost, match=r"internal error; see the server log \(code 1011\)"):
                session.push(frames, 0, 1)
    assert counting.server.connections == 2  # sent once, and once more to a new session: not forever
    tracebacks = [r for r in caplog.records if r.exc_info and "a bug of the server's" in str(r.exc_info[1])]
    assert len(tracebacks) == 2  # one per failed connection, from the server's own log line
    failures["left"] = 1  # a passing fault: the chunk goes to a new session, and the stream goes on
    with RemoteSession(counting.url, reconnect=QUICK) as session:
        session.push(frames, 0, 1)
        session.push(frames, 1, 2)
        assert session.reconnects == 1
    assert no_sessions_left(counting)


def test_session_open_and_close_are_logged_with_the_reason(server, caplog):
    with caplog.at_level(logging.INFO, logger="core.remote"):
        with RemoteSession(server.url, token=TOKEN) as session:
            number = session.session_id
        assert_closed(close_of(server, chunk(frames=0)), p.CLOSE_MALFORMED)
        with pytest.raises(StreamVLMError):
            RemoteSession(server.url, token="wrong")
        expected = [
            lambda line: line.startswith(f"session {number} (127.0.0.1:") and line.endswith(" opened"),
            lambda line: line.startswith(f"session {number} (127.0.0.1:") and "closed: " in line,
            lambda line: line.startswith(f"session {number + 1} (") and line.endswith("(code 4004)"),
            # A wrong token: logged once per burst from its address (core/remote/guard.py).
            lambda line: line.startswith("wrong or missing token from 127.0.0.1; "),
        ]
        deadline = time.monotonic() + 10  # the server logs a client's own close once it has seen it
        while time.monotonic() < deadline:
            lines = [r.getMessage() for r in caplog.records if r.name.startswith("core.remote.")]
            if all(any(match(line) for line in lines) for match in expected):
                break
            time.sleep(0.05)
    assert [any(match(line) for line in lines) for match in expected] == [True] * 4, lines


def test_the_client_fits_a_long_previous_text_into_one_hello(server):
    text = "début " + 'é€😀"\n' * 20_000 + " fin"  # many bytes and escapes per character
    with RemoteSession(server.url, token=TOKEN, previous_text=text) as session:
        session.push(random_frames(np.random.default_rng(0), 56, 56), 0, 1)
    with pytest.raises(StreamVLMError, match="shorten the instruction"):
        RemoteSession(server.url, token=TOKEN, instruction="x" * p.MAX_TEXT_BYTES)
    with RemoteSession(server.url, token=TOKEN) as session:
        for bad in [(float("nan"), 1.0), (2.0, 1.0), (0.0, float("inf"))]:
            with pytest.raises(ValueError):
                session.push(random_frames(np.random.default_rng(0), 56, 56), *bad)
