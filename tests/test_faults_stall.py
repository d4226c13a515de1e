"""A live source that stays connected but stops sending pictures (issue 21, fault 3).

A real TCP server on loopback sends a real MPEG-TS to `RtspSource` (FFmpeg's tcp:// reader): on each
connection pictures with sound, then sound only, as a camera whose video encoder died while its audio
goes on; or then only null packets, which the demuxer swallows. The source must notice, say so in one
line, reconnect like after a drop, and give up in time if pictures never come back.
"""

from __future__ import annotations

import io
import logging
import math
import socket
import threading
import time
from fractions import Fraction

import av
import numpy as np
import pytest

from core.errors import SourceError
from core.media.reconnect import Backoff
from core.media.sources import RtspSource
from core.media.watchdog import FrameWatchdog

FPS = 10
NULL_PACKET = bytes([0x47, 0x1F, 0xFF, 0x10]) + b"\xff" * 184


Segments = list[tuple[bytes, float]]  # pieces of one transport stream, each with the seconds it lasts


def transport_stream(video_s: float, audio_s: float) -> Segments:
    """An MPEG-TS with a video and an audio stream, `video_s` seconds of pictures and `audio_s` of sound,
    in two segments to be sent at their own pace: while there are pictures, and after."""
    buffer = io.BytesIO()
    split = 0
    with av.open(buffer, "w", format="mpegts") as out:
        video = out.add_stream("mpeg2video", rate=FPS)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        audio = out.add_stream("mp2", rate=16_000)
        audio.layout = "mono"
        samples = 16_000 // FPS
        for i in range(round(max(video_s, audio_s) * FPS)):
            if i < video_s * FPS:
                picture = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 + 10 * i, np.uint8), "rgb24")
                picture.pts, picture.time_base = i, Fraction(1, FPS)
                out.mux(video.encode(picture))
                split = buffer.tell()
            if i < audio_s * FPS:
                sound = av.AudioFrame.from_ndarray(
                    np.zeros((1, samples), np.int16), format="s16", layout="mono"
                )
                sound.sample_rate, sound.pts = 16_000, i * samples
                out.mux(audio.encode(sound))
        out.mux(video.encode(None))
        out.mux(audio.encode(None))
    data = buffer.getvalue()
    return [(data[:split], max(video_s, 0.1)), (data[split:], max(audio_s - video_s, 0.1))]


class StallingServer:
    """Serves, on each connection, `first` (the first connection) or `again` (later ones), each segment
    paced evenly over its seconds, then `tail` repeated until the client goes. Counts connections."""

    TICK = 0.02  # seconds between sends

    def __init__(self, first: Segments, again: Segments, tail: bytes = b"") -> None:
        self.first, self.again, self.tail = first, again, tail
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            segments = self.first if self.connections == 1 else self.again
            threading.Thread(target=self._send, args=(client, segments), daemon=True).start()

    def _send(self, client: socket.socket, segments: Segments) -> None:
        with client:
            try:
                for data, seconds in (s for s in segments if s[0]):
                    step = max(1, math.ceil(len(data) / seconds * self.TICK))
                    for at in range(0, len(data), step):
                        client.sendall(data[at : at + step])
                        if self.closed.wait(self.TICK):
                            return
                while self.tail and not self.closed.wait(self.TICK):
                    client.sendall(self.tail * 10)
            except OSError:  # the client went
                return

    def close(self) -> None:
        self.closed.set()
        self.listener.close()


def read_in_thread(source: RtspSource):
    """Iterate `source` in a thread: (frame times, the error it ended with, its thread)."""
    times: list[float] = []
    ended: list[BaseException] = []

    def read() -> None:
        try:
            for frame in source:
                times.append(frame.t)
        except BaseException as exc:
            ended.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return times, ended, thread


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.parametrize("stall", ["sound only", "null packets"])
def test_a_stream_that_stops_sending_pictures_is_reconnected_like_a_drop(stall, caplog):
    # Pictures for 2 s, then 30 s of sound only (the demuxer keeps delivering packets, so FFmpeg's read
    # timeout never fires), or pictures then null packets forever (caught by the read timeout).
    data = transport_stream(2.0, 30.0 if stall == "sound only" else 2.0)
    server = StallingServer(data, data, tail=NULL_PACKET if stall == "null packets" else b"")
    source = RtspSource(
        server.url,
        fps=2.0,
        backoff=Backoff(initial=0.2, cap=0.2, give_up_after=60.0),
        read_timeout=1.0,  # shorter than the watchdog's, so each fault meets its own detector
        frame_timeout=2.0,
    )
    try:
        with caplog.at_level(logging.INFO, logger="core.media.reconnect"):
            times, ended, _ = read_in_thread(source)
            # The second connection's pictures arrive: the stall was noticed and the stream reopened.
            assert wait_for(lambda: server.connections >= 2 and len(times) >= 6, 20.0), (
                f"no reconnection: {server.connections} connection(s), frames at {times}, {ended}"
            )
    finally:
        source.close()
        server.close()
    assert not ended
    assert times == sorted(set(times)), "stream time went back across the reconnection"
    lost = [r.getMessage() for r in caplog.records if "lost (" in r.getMessage()]
    assert lost, "the stall was not reported"
    if stall == "sound only":
        assert "no video frame for" in lost[0] and "still delivers data" in lost[0]
    else:
        assert "read timeout" in lost[0]
    assert any("reconnected after" in r.getMessage() for r in caplog.records)


def test_a_stream_whose_pictures_never_come_back_gives_up_though_it_reconnects(caplog):
    # The first connection shows pictures, every later one only sound: each reconnection succeeds, yet
    # no picture comes; the backoff's give-up time counts from the last picture, so it ends.
    server = StallingServer(transport_stream(2.0, 30.0), transport_stream(0.0, 30.0))
    source = RtspSource(
        server.url,
        fps=2.0,
        backoff=Backoff(initial=0.1, cap=0.1, give_up_after=5.0),
        frame_timeout=1.5,
    )
    try:
        times, ended, thread = read_in_thread(source)
        thread.join(timeout=20.0)
        assert not thread.is_alive(), f"still reconnecting after {server.connections} connections"
    finally:
        source.close()
        server.close()
    assert server.connections >= 2, "it gave up without reconnecting"
    assert len(ended) == 1 and isinstance(ended[0], SourceError)
    assert "could not be reached again for 5 s (no video frame for" in str(ended[0])
    assert times and times[0] == 0.0


def test_the_watchdog_counts_from_the_last_frame_and_gives_a_new_connection_the_whole_timeout(monkeypatch):
    clock = {"t": 100.0}  # moved by hand
    monkeypatch.setattr(time, "monotonic", lambda: clock["t"])
    watchdog = FrameWatchdog(timeout=10.0)
    clock["t"] = 109.0
    watchdog.check()
    watchdog.frame()
    clock["t"] = 118.0
    watchdog.check()
    clock["t"] = 120.0
    with pytest.raises(SourceError, match="no video frame for 11.0 s"):
        watchdog.check()
    watchdog.connected()
    clock["t"] = 125.0
    watchdog.check()
    assert watchdog.last_frame == 109.0
    with pytest.raises(ValueError, match="positive"):
        FrameWatchdog(timeout=0)
