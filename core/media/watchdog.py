"""A live source that stays connected but sends no pictures: noticed, then treated as a drop.

FFmpeg's read timeout (`RtspSource`'s `read_timeout`, 5 s) ends a read that gets no packet at all: a
silent socket, or one carrying only null or table packets, which the demuxer consumes itself. It
cannot see a connection whose packets keep coming while no picture comes out of them: a camera whose
video encoder died while its audio goes on, a video stream the decoder never starts (no key frame),
a feed whose every video packet is rejected. `FrameWatchdog` watches the pictures instead: the
reader checks it at every packet, and once `timeout` seconds pass without a decoded frame it raises
`SourceStalled`, which the source handles like a dropped connection (core/media/reconnect.py).

Why 10 s (`FRAME_TIMEOUT`): it must outlast the longest wait for a picture on a healthy stream, and
each second beyond that is commentary lost. A fresh connection waits for a key frame before the first
picture: live encoders send one every 1 to 4 s (the usual streaming recommendation is 2 s, at most
4 s), IP cameras' "smart" codecs stretch the interval to 8 to 10 s on static scenes, and a
variable-rate camera may slow to 1 frame a second. Twice the read timeout also keeps a silent socket
reported by the read timeout, whose reason is the more precise one, and it is FFmpeg's own threshold
for a timestamp gap that is no longer a gap (`_LEAP` in core/media/sources.py).
"""

from __future__ import annotations

import time

from core.errors import SourceError

FRAME_TIMEOUT = 10.0  # seconds without a decoded frame on a connection that still delivers packets


class SourceStalled(SourceError):
    """The connection is open and delivers data, but no frame came for the watchdog's timeout."""


class FrameWatchdog:
    """Raises `SourceStalled` from `check()` once `timeout` seconds pass without `frame()` being called
    (counted from the last frame, or from `connected()` when a new connection has given none yet)."""

    def __init__(self, timeout: float = FRAME_TIMEOUT) -> None:
        if not timeout > 0:
            raise ValueError(f"the frame timeout must be positive (got {timeout})")
        self.timeout = timeout
        # When a frame last came (monotonic; the start before the first): a source that reconnects but
        # never shows a picture counts as lost since then, so its reconnection gives up in time.
        self.last_frame = time.monotonic()
        self._since = self.last_frame  # the start of the current wait

    def connected(self) -> None:
        """A new connection: it gets the whole timeout for its first frame (a key frame may be far)."""
        self._since = time.monotonic()

    def frame(self) -> None:
        self.last_frame = self._since = time.monotonic()

    def check(self) -> None:
        waited = time.monotonic() - self._since
        if waited > self.timeout:
            raise SourceStalled(
                f"no video frame for {waited:.1f} s though the connection still delivers data"
            )
