"""Video sources: where frames come from, sampled at a fixed rate in stream seconds.

Every source is a `Source`: iterate it for `Frame`s whose `t` runs 0, 1/fps, 2/fps, ... and
close it (or use it as a context manager) when done. `FileSource` decodes any file FFmpeg
reads; live sources (camera, screen, RTSP) will sit beside it in this module.

The frame yielded for sample time t_k = k / fps is the one on screen at t_k: the latest
decoded frame whose presentation time (relative to the first frame) is <= t_k. Sampling by
time rather than by frame index keeps variable-frame-rate files and dropped frames honest.

Damaged files are played the way a media player plays them: what decodes is shown, what does
not is skipped, and one warning line says where the trouble was. A file cut short (a recording
that crashed, a partial download) ends at its last good frame with an "ended early" warning.
"""

from __future__ import annotations

import abc
import itertools
import logging
import re
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Self

import av
import numpy as np

from core.errors import SourceError
from core.types import Frame

logger = logging.getLogger(__name__)

_EPS = 1e-6  # seconds; absorbs float noise when a frame's time equals a sample time
_BACKWARD_JUMP = 0.5  # seconds; a larger step back in pts is a discontinuity (concatenated TS), not jitter
_RECOVERED_AFTER = 1.0  # seconds of good frames after damage before it counts as a glitch, not the end
_TS_SUFFIXES = {".ts", ".m2ts", ".mts"}
_TEXT_DEMUXERS = {"tty"}  # FFmpeg renders .txt/.ans files as ANSI-art "video"; nobody means that
_TS_PACKET_SIZES = (188, 192)  # MPEG-TS and M2TS: a file cut mid-packet is a multiple of neither


class Source(abc.ABC):
    """A stream of sampled RGB frames. Files restart on each iteration; live sources continue.

    A picture on screen for several sample times is yielded as the same array each time, so
    consumers must not modify frames in place.
    """

    duration: float | None = None  # seconds, when known up front (for progress bars)

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Frame]: ...

    @abc.abstractmethod
    def close(self) -> None:
        """Stop producing frames and release the file or device; safe to call twice or from another thread."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class FileSource(Source):
    """Frames of a video file sampled at `fps`; `realtime=True` paces them like a live feed."""

    def __init__(self, path: str | Path, fps: float = 2.0, realtime: bool = False) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be positive (got {fps})")
        self.path = Path(path)
        self.fps = fps
        self.realtime = realtime
        self._stop = threading.Event()
        self._lock = threading.Lock()  # hands the open container to exactly one owner
        self._container: av.container.InputContainer | None = self._open()  # fail here, not mid-iteration
        self.duration = _declared_duration(self._container.streams.video[0], self._container)

    def __iter__(self) -> Iterator[Frame]:
        with self._lock:
            if self._stop.is_set():
                return
            container, self._container = self._container or self._open(), None
        try:
            yield from self._paced(self._sampled(container))
        finally:
            container.close()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            # A running iteration owns its container and closes it on its way out: closing it from
            # another thread while FFmpeg decodes from it would free memory under the decoder.
            if self._container is not None:
                self._container.close()
                self._container = None

    def _open(self) -> av.container.InputContainer:
        if not self.path.exists():
            raise SourceError(f"video file '{self.path}' does not exist; check the path and try again")
        if self.path.is_dir():
            raise SourceError(f"'{self.path}' is a folder, not a video file; pass the path of a video file")
        try:
            container = av.open(str(self.path), mode="r")
        except av.error.FFmpegError as exc:
            # FFmpeg says only "invalid data" both for a text file and for an MP4 cut before its index.
            raise SourceError(
                f"'{self.path}' could not be opened as a video ({_reason(exc)}): it is not a video file, or it is "
                "truncated or damaged; check that it plays in a media player"
            ) from None
        if container.format.name in _TEXT_DEMUXERS:
            container.close()
            raise SourceError(f"'{self.path}' is a text file, not a video; pass a video file")
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["no streams at all"]
            container.close()
            raise SourceError(
                f"'{self.path}' has no video stream (it holds {', '.join(kinds)}); pass a file that contains video"
            )
        return container

    def _sampled(self, container: av.container.InputContainer) -> Iterator[Frame]:
        """Walk the decoded frames once, yielding the frame on screen at each sample time."""
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threads: every frame is decoded, however few are sampled
        decoded = _Decoded(container, stream, self._stop)
        clock = _Clock(stream)
        k = 0  # next sample index
        shown: av.VideoFrame | None = None  # the frame on screen now
        shown_rgb: np.ndarray | None = None  # its pixels, converted once however often it is sampled
        trouble: tuple[str, float] | None = None  # damage not yet known to be a glitch or the end
        warned = False
        for frame in itertools.chain(decoded, [None]):
            if damage := decoded.take_damage():
                trouble = trouble or (damage, clock.end)
            if frame is None:
                if shown is None:
                    raise SourceError(
                        f"'{self.path}' has a video stream but no frame of it could be decoded "
                        f"({trouble[0] if trouble else 'the stream is empty'}); check that it plays in a media player"
                    )
                until = clock.end  # the last frame stays on screen for its own duration, as in a player
                reason = trouble[0] if trouble else self._cut_short(until, clock.step)
                if reason is not None and not self._stop.is_set():
                    logger.warning("video '%s' ended early at t=%.2fs: %s", self.path, until, reason)
            else:
                until = clock.time_of(frame)
                if trouble is not None and until > trouble[1] + _RECOVERED_AFTER:
                    if not warned:  # one line per file, however many glitches follow
                        logger.warning(
                            "video '%s' is damaged near t=%.2fs (%s); skipped it",
                            self.path,
                            trouble[1],
                            trouble[0],
                        )
                    warned, trouble = True, None
            if shown is not None:
                while k / self.fps < until - _EPS:
                    if shown_rgb is None:
                        shown_rgb = shown.to_ndarray(format="rgb24")
                    yield Frame(shown_rgb, k / self.fps)
                    k += 1
            shown, shown_rgb = frame, None
            if self._stop.is_set():
                return

    def _cut_short(self, end: float, step: float) -> str | None:
        """Why a stream that decoded cleanly still looks cut short, or None if it does not."""
        # Containers with a declared length disagree with the frames by at most a frame or so.
        if self.duration is not None and end < self.duration - 2 * step - 0.1:
            return f"the file declares {self.duration:.2f}s of video but the rest is missing"
        # MPEG-TS has no header or index to compare with; a cut shows only as a torn last packet.
        if self.path.suffix.lower() in _TS_SUFFIXES:
            size = self.path.stat().st_size
            if all(size % n for n in _TS_PACKET_SIZES):
                return "the file stops in the middle of a transport-stream packet"
        return None

    def _paced(self, frames: Iterator[Frame]) -> Iterator[Frame]:
        if not self.realtime:
            yield from frames
            return
        start = None
        for frame in frames:
            if start is None:
                start = time.monotonic() - frame.t
            # Waiting on the stop event rather than sleeping lets close() end the pacing at once.
            if self._stop.wait(max(0.0, start + frame.t - time.monotonic())):
                return
            yield frame


class _Clock:
    """Stream time of decoded frames: seconds since the first frame, never jumping backwards."""

    def __init__(self, stream: av.video.stream.VideoStream) -> None:
        self.time_base = stream.time_base or Fraction(1, 90_000)
        self.default_step = 1 / float(stream.guessed_rate) if stream.guessed_rate else 0.0
        self.first_pts: int | None = None
        self.offset = 0.0  # added after a discontinuity so time keeps increasing
        self.last: float | None = None
        self.step = self.default_step  # how long the last frame stays on screen

    def time_of(self, frame: av.VideoFrame) -> float:
        if frame.pts is None:
            t = 0.0 if self.last is None else self.last + self.step
        else:
            if self.first_pts is None:
                self.first_pts = frame.pts
            t = float((frame.pts - self.first_pts) * self.time_base) + self.offset
            if self.last is not None and t < self.last - _BACKWARD_JUMP:
                # Timestamps restarted (byte-concatenated recordings): go on where the last frame ends.
                self.offset += self.last + self.step - t
                t = self.last + self.step
        self.last = t
        self.step = float(frame.duration * self.time_base) if frame.duration else self.default_step
        return t

    @property
    def end(self) -> float:
        """When the last frame seen leaves the screen."""
        return 0.0 if self.last is None else self.last + self.step


class _Decoded:
    """Good decoded frames of one video stream, in presentation order, skipping what is damaged.

    Like a media player it decodes packets the demuxer flagged as corrupt (the seam of two
    concatenated transport streams is flagged, yet decodes fine), drops packets the decoder
    rejects and frames it could only partly reconstruct, and stops where the demuxer cannot read
    on. `take_damage()` says whether something was dropped since the consumer last asked.
    """

    def __init__(
        self,
        container: av.container.InputContainer,
        stream: av.video.stream.VideoStream,
        stop: threading.Event,
    ) -> None:
        self.container, self.stream, self.stop = container, stream, stop
        self._damage: str | None = None

    def take_damage(self) -> str | None:
        """Why frames were dropped since the last call (None if none were), and forget it."""
        damage, self._damage = self._damage, None
        return damage

    def __iter__(self) -> Iterator[av.VideoFrame]:
        last_corrupt = False
        try:
            for packet in self.container.demux(self.stream):
                if self.stop.is_set():
                    return
                if packet.size:
                    last_corrupt = packet.is_corrupt
                yield from self._decode(packet)  # the last, empty packet flushes the decoder
        except av.error.FFmpegError as exc:
            self._damage = f"FFmpeg could not read further ({_reason(exc)})"
            yield from self._decode(None)  # frames the decoder still holds from good packets
            return
        if last_corrupt:
            # A file cut mid-packet ends in one the demuxer flags; with frame threads the decoder
            # may conceal it silently, so this flag is the dependable sign.
            self._damage = self._damage or "its last packet is incomplete"

    def _decode(self, packet: av.Packet | None) -> Iterator[av.VideoFrame]:
        try:
            frames = self.stream.decode(packet)
        except av.error.FFmpegError as exc:
            self._damage = f"the decoder rejected a packet ({_reason(exc)})"
            return
        for frame in frames:
            if frame.is_corrupt:
                self._damage = "a frame could only be partly decoded"
            else:
                yield frame


def _declared_duration(
    stream: av.video.stream.VideoStream, container: av.container.InputContainer
) -> float | None:
    """Video length in seconds as the file states it: the video stream's own, else the container's."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    # Matroska keeps per-track lengths in a tag; the container's length may include longer audio.
    tag = re.fullmatch(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", stream.metadata.get("DURATION", ""))
    if tag:
        return int(tag[1]) * 3600 + int(tag[2]) * 60 + float(tag[3])
    if container.duration:
        return container.duration / av.time_base
    return None


def _reason(exc: av.error.FFmpegError) -> str:
    return exc.strerror or type(exc).__name__
