"""Video sources: where frames come from, sampled at a fixed rate in stream seconds.

(Over 500 lines because the four kinds of source share one sampling-by-time rule, one reconnection
and one `--source` parser; each class is short, and they are read together.)

Every source is a `Source`: iterate it for `Frame`s whose `t` runs 0, 1/fps, 2/fps, ... and
close it (or use it as a context manager) when done. `FileSource` decodes any file FFmpeg
reads; `RtspSource` reads network streams (RTSP, RTMP, HTTP(S), UDP, SRT) by presentation time;
`CameraSource` (OpenCV) and `ScreenSource` (mss) sample on the monotonic clock. `open_source`
turns a user's `--source` text into one of them, and `list_cameras` / `list_monitors` say what
this machine has. Live sources that drop reconnect with backoff (core/media/reconnect.py); their times
keep increasing across the gap, and sample times inside a gap yield no frame.

The frame yielded for sample time t_k = k / fps is the one on screen at t_k: the latest
decoded frame whose presentation time (relative to the first frame) is <= t_k. Sampling by
time rather than by frame index keeps variable-frame-rate files and dropped frames honest.

Pictures come out the way players show them: a phone clip stored sideways with a display matrix
(or the legacy `rotate` tag) saying "turn me" is turned, so the model, the overlay and the
recording all see it upright (core/media/orientation.py, the one place that does this for every
reader of video in the project).

Damaged files are played the way a media player plays them: what decodes is shown, what does
not is skipped, and one warning line says where the trouble was. A file cut short (a recording
that crashed, a partial download) ends at its last good frame with an "ended early" warning.
"""

from __future__ import annotations

import abc
import itertools
import logging
import math
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from core.errors import SourceError
from core.media.orientation import displayed_rgb
from core.media.reconnect import Backoff, Reconnector, SourceState, StateCallback
from core.media.watchdog import FRAME_TIMEOUT, FrameWatchdog, SourceStalled
from core.types import Closeable, Frame

logger = logging.getLogger(__name__)

_EPS = 1e-6  # seconds; absorbs float noise when a frame's time equals a sample time
_BACKWARD_JUMP = 0.5  # seconds; a larger step back in pts is a discontinuity (concatenated TS), not jitter
_RECOVERED_AFTER = 1.0  # seconds of good frames after damage before it counts as a glitch, not the end
_TS_SUFFIXES = {".ts", ".m2ts", ".mts"}
_TEXT_DEMUXERS = {"tty"}  # FFmpeg renders .txt/.ans files as ANSI-art "video"; nobody means that
_TS_PACKET_SIZES = (188, 192)  # MPEG-TS and M2TS: a file cut mid-packet is a multiple of neither
_HOLD = 1.0  # seconds; a live frame older than this is a gap (dropped source), not a still picture
# A forward step in pts larger than this, in a format that allows timestamp discontinuities (MPEG-TS,
# FLV, RTP: AVFMT_TS_DISCONT), is a clock reset, not a gap: FFmpeg's own -dts_delta_threshold default.
_LEAP = 10.0
_AVFMT_TS_DISCONT = 0x0200  # libavformat's flag for those formats
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "rtp", "srt", "tcp")


class Source(Closeable, abc.ABC):
    """A stream of sampled RGB frames. Files restart on each iteration; live sources continue.

    A picture on screen for several sample times is yielded as the same array each time, so
    consumers must not modify frames in place.
    """

    duration: float | None = None  # seconds, when known up front (for progress bars)
    native_fps: float | None = None  # the rate the source delivers pictures at, when known (recording)
    fps: float  # the sample rate; may be changed before iterating

    @abc.abstractmethod
    def __iter__(self) -> Iterator[Frame]: ...

    @abc.abstractmethod
    def close(self) -> None:
        """Stop producing frames and release the file or device; safe to call twice or from another thread."""


@dataclass
class Damage:
    """What a source met so far: damaged packets and frames (`damaged`: packets the demuxer flagged as
    damaged, which are decoded and concealed as a player does, packets the decoder rejected and frames
    it could only partly decode, which are skipped), and timestamp discontinuities stepped over (`jumps`)."""

    damaged: int = 0
    jumps: int = 0


class _ContainerSource(Source):
    """A source reading one PyAV container at a time, which exactly one owner closes."""

    def __init__(self) -> None:
        self.damage = Damage()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # hands the open container to exactly one owner
        self._container: av.container.InputContainer | None = None

    def _take_container(self) -> tuple[bool, av.container.InputContainer | None]:
        """(False, None) once closed; else (True, the container opened ahead of iteration, if any)."""
        with self._lock:
            if self._stop.is_set():
                return False, None
            container, self._container = self._container, None
            return True, container

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            # A running iteration owns its container and closes it on its way out: closing it from
            # another thread while FFmpeg decodes from it would free memory under the decoder.
            if self._container is not None:
                self._container.close()
                self._container = None


class FileSource(_ContainerSource):
    """Frames of a video file sampled at `fps`; `realtime=True` paces them like a live feed."""

    def __init__(self, path: str | Path, fps: float = 2.0, realtime: bool = False) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be positive (got {fps})")
        self.path = Path(path)
        self.fps = fps
        self.realtime = realtime
        super().__init__()
        self._container = self._open()  # fail here, not mid-iteration
        video = self._container.streams.video[0]
        self.duration = _declared_duration(video, self._container)
        self.native_fps = float(video.guessed_rate) if video.guessed_rate else None

    def __iter__(self) -> Iterator[Frame]:
        running, container = self._take_container()
        if not running:
            return
        container = container or self._open()
        try:
            yield from self._paced(self._sampled(container))
        finally:
            container.close()

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
        decoded = _Decoded(container, stream, self._stop, self.damage)
        clock = _Clock(
            stream, self.damage, leap=_LEAP if container.format.flags & _AVFMT_TS_DISCONT else None
        )
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
                        shown_rgb = displayed_rgb(shown, stream)
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
    """Stream time of decoded frames: seconds since the first frame, never jumping backwards, and never
    leaping forward further than `leap` seconds past the last frame (None: any gap is real), or, when
    `live`, further than the wall clock moved since the last frame (plus `_LEAP`)."""

    def __init__(
        self,
        stream: av.video.stream.VideoStream,
        damage: Damage,
        *,
        leap: float | None = None,
        live: bool = False,
    ) -> None:
        self.damage, self.leap, self.live = damage, leap, live
        self.last_wall = time.monotonic()
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
            if self.last is not None and (resumed := self._resume(t)) is not None:
                # Timestamps restarted or leapt (concatenated recordings, a server restarted, a camera's
                # clock reset): go on where the last frame ends, or as far as the wall clock moved.
                self.damage.jumps += 1
                logger.warning(
                    "timestamps jumped from %.2fs to %.2fs; stream time goes on at %.2fs",
                    self.last,
                    t,
                    resumed,
                )
                self.offset += resumed - t
                t = resumed
        self.last, self.last_wall = t, time.monotonic()
        self.step = float(frame.duration * self.time_base) if frame.duration else self.default_step
        return t

    def _resume(self, t: float) -> float | None:
        """Where a frame stamped `t` goes if its stamp is a discontinuity; None if it is not one."""
        assert self.last is not None
        if t < self.last - _BACKWARD_JUMP:
            return self.last + self.step
        if self.live:
            moved = time.monotonic() - self.last_wall
            return self.last + max(self.step, moved) if t > self.last + moved + _LEAP else None
        if self.leap is not None and t > self.last + self.leap:
            return self.last + self.step
        return None

    @property
    def end(self) -> float:
        """When the last frame seen leaves the screen."""
        return 0.0 if self.last is None else self.last + self.step


class _Decoded:
    """Good decoded frames of one video stream, in presentation order, skipping what is damaged.

    Like a media player it decodes packets the demuxer flagged as corrupt (the seam of two
    concatenated transport streams is flagged, yet decodes fine), drops packets the decoder
    rejects and frames it could only partly reconstruct, and stops where the demuxer cannot read
    on. `take_damage()` says whether something was dropped since the consumer last asked. With a
    `watchdog` (live streams), every stream's packets are read so that it is checked at each one: a
    connection that delivers only audio must not keep the demuxer busy out of the watchdog's sight.
    """

    def __init__(
        self,
        container: av.container.InputContainer,
        stream: av.video.stream.VideoStream,
        stop: threading.Event,
        damage: Damage,
        watchdog: FrameWatchdog | None = None,
    ) -> None:
        self.container, self.stream, self.stop = container, stream, stop
        self.counts = damage
        self.watchdog = watchdog
        self._damage: str | None = None

    def take_damage(self) -> str | None:
        """Why frames were dropped since the last call (None if none were), and forget it."""
        damage, self._damage = self._damage, None
        return damage

    def __iter__(self) -> Iterator[av.VideoFrame]:
        last_corrupt = False
        watchdog = self.watchdog
        packets = self.container.demux() if watchdog else self.container.demux(self.stream)
        try:
            for packet in packets:
                if self.stop.is_set():
                    return
                if watchdog is not None:
                    watchdog.check()  # raises SourceStalled
                    if packet.stream.index != self.stream.index:
                        continue
                if packet.size:
                    last_corrupt = packet.is_corrupt
                    self.counts.damaged += packet.is_corrupt
                for frame in self._decode(packet):  # the last, empty packet flushes the decoder
                    if watchdog is not None:
                        watchdog.frame()
                    yield frame
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
            self.counts.damaged += 1
            return
        for frame in frames:
            if frame.is_corrupt:
                self._damage = "a frame could only be partly decoded"
                self.counts.damaged += 1
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
    if isinstance(exc, av.error.ExitError):  # PyAV's read timeout interrupted a read that got nothing
        return "no data arrived within the read timeout"
    return exc.strerror or type(exc).__name__


# -- live sources ------------------------------------------------------------------------------------


class RtspSource(_ContainerSource):
    """A live network stream FFmpeg reads: RTSP (over TCP), RTMP, HTTP(S), UDP, SRT.

    Frames are sampled at `fps` by presentation time, like a file. When the stream stalls for
    `read_timeout` seconds, delivers data but no frame for `frame_timeout` seconds
    (core/media/watchdog.py), ends or errors, it is opened again with backoff (`Backoff`), and the
    new connection's frames continue after the old ones, shifted by the time spent reconnecting.
    The backoff gives up once no frame came for its `give_up_after`, however often it reconnected.
    """

    def __init__(
        self,
        url: str,
        fps: float = 2.0,
        *,
        backoff: Backoff | None = None,
        on_state: StateCallback | None = None,
        open_timeout: float = 5.0,
        read_timeout: float = 5.0,
        frame_timeout: float = FRAME_TIMEOUT,
    ) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be positive (got {fps})")
        if not frame_timeout > 0:
            raise ValueError(f"frame_timeout must be positive (got {frame_timeout})")
        scheme = _scheme(url)
        if scheme not in STREAM_SCHEMES:
            raise SourceError(_unsupported_scheme(scheme))
        self.url, self.fps = url, fps
        self.timeouts = (open_timeout, read_timeout)
        self.frame_timeout = frame_timeout
        super().__init__()
        self._reconnect = Reconnector(f"stream {url}", backoff or Backoff(), on_state, self._stop)
        self._container = self._open()  # fail here, not mid-stream
        rate = self._container.streams.video[0].guessed_rate
        self.native_fps = float(rate) if rate else None
        self._reconnect.report(SourceState.CONNECTED, "connected")

    def _open(self) -> av.container.InputContainer:
        # Probe briefly (FFmpeg's default reads ~3 s of a live stream before the first frame) and do not buffer.
        options = {"analyzeduration": "500000", "probesize": "262144", "fflags": "nobuffer"}
        if _scheme(self.url).startswith("rtsp"):
            options["rtsp_transport"] = "tcp"
        try:
            container = av.open(self.url, mode="r", options=options, timeout=self.timeouts)
        except (av.error.FFmpegError, OSError) as exc:
            raise SourceError(
                f"stream '{self.url}' could not be opened ({_reason(exc)}); check the URL and that the server "
                "is running and reachable"
            ) from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"stream '{self.url}' has no video; pass a stream that carries video")
        return container

    def __iter__(self) -> Iterator[Frame]:
        running, container = self._take_container()
        if not running:
            return
        container = container or self._open()
        samples = _LiveSampler(self.fps)
        watchdog = FrameWatchdog(self.frame_timeout)
        offset = 0.0  # stream time of this connection's first frame
        while container is not None:
            stream = container.streams.video[0]
            clock = _Clock(stream, self.damage, live=True)
            # Damaged packets are skipped as in a file; only a demuxer that cannot read on is a drop.
            watchdog.connected()
            decoded = _Decoded(container, stream, self._stop, self.damage, watchdog)
            reason, stalled = "the stream ended", None
            try:
                for frame in decoded:
                    if self._stop.is_set():
                        return
                    yield from samples.add(frame, stream, offset + clock.time_of(frame))
            except SourceStalled as exc:
                stalled = str(exc)
            except (av.error.FFmpegError, OSError) as exc:
                reason = _reason(exc)
            finally:
                container.close()
            reason = stalled or decoded.take_damage() or reason
            if self._stop.is_set():
                return
            # Raises SourceError when it gives up, counting from the last frame (a stalled source that
            # reconnects again and again still gives up).
            container = self._reconnect.reopen(self._open, reason, since=watchdog.last_frame)
            offset = samples.resume_time()


class _LiveSampler:
    """Yields the frame on screen at each sample time k / fps as later frames arrive; a span with no
    frames for longer than `_HOLD` is a gap, whose sample times yield nothing."""

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.k = 0
        self.shown: av.VideoFrame | None = None
        self.shown_stream: av.video.stream.VideoStream | None = None  # the stream it came from
        self.shown_t = 0.0
        self.shown_rgb: np.ndarray | None = None
        self.shown_at = time.monotonic()

    def add(self, frame: av.VideoFrame, stream: av.video.stream.VideoStream, t: float) -> Iterator[Frame]:
        if self.shown is not None:
            until = min(t, self.shown_t + _HOLD)
            while self.k / self.fps < until - _EPS:
                if self.shown_rgb is None:
                    self.shown_rgb = displayed_rgb(self.shown, self.shown_stream)
                yield Frame(self.shown_rgb, self.k / self.fps)
                self.k += 1
        if self.k / self.fps < t - _EPS and self.shown is not None:
            self.k = math.ceil(t * self.fps - _EPS)  # skip the gap's sample times
        self.shown, self.shown_stream, self.shown_t, self.shown_rgb = frame, stream, t, None
        self.shown_at = time.monotonic()

    def resume_time(self) -> float:
        """Where a new connection's first frame goes: after the last frame, plus the time it was away."""
        return self.shown_t + (time.monotonic() - self.shown_at)


class CameraSource(Source):
    """A camera through OpenCV, by index (`0`) or device path (`/dev/video0`), sampled at `fps`.

    A reader thread takes every frame the camera delivers and keeps the newest, so a sample is
    never a stale buffered frame; times are the monotonic clock since the first sample. A camera
    that stops delivering (unplugged) is reopened with backoff.
    """

    def __init__(
        self,
        device: int | str = 0,
        fps: float = 2.0,
        *,
        width: int | None = None,
        height: int | None = None,
        capture_fps: float | None = None,
        backoff: Backoff | None = None,
        on_state: StateCallback | None = None,
    ) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be positive (got {fps})")
        self.cv2 = _import_cv2()
        self.device, self.fps = device, fps
        self.size, self.capture_fps = (width, height), capture_fps
        self._stop = threading.Event()
        self._reconnect = Reconnector(f"camera {device}", backoff or Backoff(), on_state, self._stop)
        self._capture = self._open()
        self.native_fps = float(self._capture.get(self.cv2.CAP_PROP_FPS)) or None
        self._reconnect.report(SourceState.CONNECTED, "connected")
        self._latest: tuple[np.ndarray, float] | None = None  # (BGR frame, monotonic time it arrived)
        self._error: SourceError | None = None
        self._new_frame = threading.Condition()
        self._reader: threading.Thread | None = None

    def _open(self):
        cv2 = self.cv2
        capture = cv2.VideoCapture(self.device)
        if not capture.isOpened():
            capture.release()
            raise SourceError(
                f"camera {self.device} could not be opened; `python -m core sources` lists the cameras that open"
            )
        width, height = self.size
        if width and height:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        if self.capture_fps:
            capture.set(cv2.CAP_PROP_FPS, self.capture_fps)
        return capture

    def _read_forever(self) -> None:
        capture = self._capture
        try:
            while not self._stop.is_set():
                ok, frame = capture.read() if capture is not None else (False, None)
                if ok:
                    with self._new_frame:
                        self._latest = (frame, time.monotonic())
                        self._new_frame.notify_all()
                    continue
                if capture is not None:
                    capture.release()
                capture = self._capture = None
                capture = self._capture = self._reconnect.reopen(self._open, "it delivered no frame")
        except SourceError as exc:
            self._error = exc
        finally:
            if capture is not None:
                capture.release()
            with self._new_frame:
                self._new_frame.notify_all()

    def __iter__(self) -> Iterator[Frame]:
        if self._reader is None:
            self._reader = threading.Thread(target=self._read_forever, name="camera-reader", daemon=True)
            self._reader.start()
        start = None
        k = 0
        while not self._stop.is_set():
            with self._new_frame:
                self._new_frame.wait_for(
                    lambda: self._latest or self._error or self._stop.is_set(), timeout=1.0
                )
            if self._error is not None:
                raise self._error
            if self._latest is None:
                continue
            if start is None:
                start = time.monotonic()
            # Wait for the next sample time, then take the newest frame if it is recent.
            slot = start + k / self.fps
            if self._stop.wait(max(0.0, slot - time.monotonic())):
                return
            frame, arrived = self._latest
            now = time.monotonic()
            if now - arrived <= _HOLD:
                yield Frame(np.ascontiguousarray(frame[:, :, ::-1]), k / self.fps)
            k = max(
                k + 1, math.floor((now - start) * self.fps)
            )  # a slow consumer skips slots, never queues them

    def close(self) -> None:
        self._stop.set()
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=5.0)
        elif self._capture is not None:
            self._capture.release()


class ScreenSource(Source):
    """A monitor, or a region of one (x, y, width, height relative to its top left), through mss.

    Grabbed at each sample time on the monotonic clock; `cursor=True` draws the pointer in.
    """

    def __init__(
        self,
        monitor: int = 1,
        region: tuple[int, int, int, int] | None = None,
        fps: float = 2.0,
        *,
        cursor: bool = False,
    ) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be positive (got {fps})")
        self.fps, self.cursor = fps, cursor
        self._stop = threading.Event()
        monitors = list_monitors(raise_errors=True)
        if not 1 <= monitor <= len(monitors):
            have = ", ".join(f"{m.index} ({m.width}x{m.height})" for m in monitors) or "none"
            raise SourceError(f"monitor {monitor} does not exist; this display has monitors {have}")
        screen = monitors[monitor - 1]
        if region is None:
            region = (0, 0, screen.width, screen.height)
        x, y, width, height = region
        if (
            width <= 0
            or height <= 0
            or x < 0
            or y < 0
            or x + width > screen.width
            or y + height > screen.height
        ):
            raise SourceError(
                f"region {x},{y},{width},{height} is not inside monitor {monitor} ({screen.width}x{screen.height}); "
                "give x,y,width,height within it"
            )
        self.box = {"left": screen.left + x, "top": screen.top + y, "width": width, "height": height}

    def __iter__(self) -> Iterator[Frame]:
        import mss

        start = time.monotonic()
        k = 0
        with mss.MSS(with_cursor=self.cursor) as screen:  # mss handles belong to the thread that made them
            while not self._stop.is_set():
                if self._stop.wait(max(0.0, start + k / self.fps - time.monotonic())):
                    return
                shot = np.asarray(screen.grab(self.box))  # BGRA
                yield Frame(np.ascontiguousarray(shot[:, :, 2::-1]), k / self.fps)
                k = max(k + 1, math.floor((time.monotonic() - start) * self.fps))

    def close(self) -> None:
        self._stop.set()


# -- what this machine has, and --source parsing -------------------------------------------------------


@dataclass(frozen=True)
class CameraInfo:
    index: int
    path: str
    width: int
    height: int


@dataclass(frozen=True)
class MonitorInfo:
    index: int  # as `screen:N` takes it, from 1
    left: int
    top: int
    width: int
    height: int


def list_cameras(max_index: int = 10) -> list[CameraInfo]:
    """Cameras that open, with their default resolution; empty where there are none (or no OpenCV)."""
    try:
        cv2 = _import_cv2()
    except SourceError:
        return []
    paths = sorted(Path("/dev").glob("video*")) if Path("/dev").is_dir() else []
    candidates = [int(p.name[5:]) for p in paths if p.name[5:].isdigit()] if paths else []
    if not paths and not Path("/dev").is_dir():  # not Linux: probe indices
        candidates = list(range(max_index))
    found = []
    for index in candidates:
        capture = cv2.VideoCapture(index)
        try:
            if capture.isOpened():
                width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
                height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
                found.append(CameraInfo(index, f"/dev/video{index}", width, height))
        finally:
            capture.release()
    return found


def list_monitors(raise_errors: bool = False) -> list[MonitorInfo]:
    """Monitors of the current display with their geometry; empty where there is no display."""
    import mss

    try:
        with mss.MSS() as screen:
            monitors = screen.monitors[1:]  # [0] is all monitors together
    except mss.exception.ScreenShotError as exc:
        if raise_errors:
            raise SourceError(
                f"there is no screen to capture ({str(exc).splitlines()[0]}); run on a desktop or set DISPLAY"
            ) from None
        return []
    return [
        MonitorInfo(i, m["left"], m["top"], m["width"], m["height"]) for i, m in enumerate(monitors, start=1)
    ]


def open_source(
    spec: str,
    fps: float = 2.0,
    *,
    realtime: bool = False,
    cursor: bool = False,
    on_state: StateCallback | None = None,
) -> Source:
    """A source from what a user typed: a file path, `camera:N` or `camera:/dev/videoN` (optionally
    `@WIDTHxHEIGHT`), `screen:N` or `screen:N@x,y,w,h`, or a stream URL (rtsp, rtmp, http(s), udp, srt)."""
    text = spec.strip()
    kind, _, rest = text.partition(":")
    if kind == "camera" and rest:
        device, _, size = rest.rpartition("@") if re.search(r"@\d+x\d+$", rest) else (rest, "", "")
        width, height = (int(v) for v in size.split("x")) if size else (None, None)
        return CameraSource(
            int(device) if device.isdigit() else device, fps, width=width, height=height, on_state=on_state
        )
    if kind == "screen":
        match = re.fullmatch(r"(\d+)(?:@(\d+),(\d+),(\d+),(\d+))?", rest or "1")
        if match is None:
            raise SourceError(f"'{spec}' is not a screen; use screen:N or screen:N@x,y,width,height")
        region = tuple(int(v) for v in match.groups()[1:]) if match[2] else None
        return ScreenSource(int(match[1]), region, fps, cursor=cursor)
    scheme = _scheme(text)
    if scheme == "file":
        return FileSource(text[len("file://") :], fps, realtime=realtime)
    if scheme in STREAM_SCHEMES:
        return RtspSource(text, fps, on_state=on_state)
    if scheme:
        raise SourceError(_unsupported_scheme(scheme))
    return FileSource(text, fps, realtime=realtime)


def _scheme(text: str) -> str:
    """The URL scheme, lower case; '' for paths (a Windows drive letter is not a scheme)."""
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]+)://", text)
    return match[1].lower() if match else ""


def _unsupported_scheme(scheme: str) -> str:
    return (
        f"'{scheme}://' sources are not supported; use a file path, camera:N, screen:N[@x,y,w,h] or a stream "
        f"URL ({', '.join(s + '://' for s in STREAM_SCHEMES)})"
    )


def _import_cv2():
    try:
        import cv2
    except ImportError:
        raise SourceError("cameras need OpenCV; install it with pip install 'streamvlm[live]'") from None
    # OpenCV's own warnings ("[ WARN:0@0.007] ... can't open camera by index") go straight to stderr from
    # C++, before the one line that says the same to the user: errors only.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    return cv2
