"""Recording: the stream as MP4 with the commentary burned in, and an SRT sidecar.

The MP4 is fragmented (`empty_moov`, a fragment at every key frame, one key frame a second) and
every packet is flushed to the file as it is written, so a crash, a killed process or a power
cut leaves a file that players open and decode up to about a second before the end. Cues go to
`<name>.srt` (core/paths.py `recording_outputs` names both files, so callers can check them before
recording) through the crash-safe subtitle writer (core/media/subtitles.py) as they are generated.
H.264 (libx264) where the PyAV build has it; otherwise MPEG-4 Part 2, which `codec` reports.

Sound is one AAC track: the captured sound (`write_audio`), the spoken commentary (`add_speech`), or
both mixed. One mixed track rather than a second one because players play the first audio track and
most never offer the others (browsers, QuickTime, phones, and VLC and mpv unless the viewer switches),
so a second track would go unheard; the commentary is spoken over the scene as a broadcast is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from core.errors import StreamVLMError
from core.media.overlay import Overlay
from core.media.subtitles import SrtWriter
from core.paths import check_output, recording_outputs
from core.types import Closeable, Commentary, Frame

log = logging.getLogger(__name__)

# skip_trailer: FFmpeg keeps an entry per fragment (one a second) for the random-access index (mfra) it
# writes on close, memory that grows with the stream (3.3 MiB a day a track); without it the muxer keeps
# only the last. The last fragment is still written on close, and a file without the index is what a
# crash leaves too: players find the fragments without it (FFmpeg's demuxer does not read it by default).
_FRAGMENTED = {"movflags": "frag_keyframe+empty_moov+default_base_moof+skip_trailer", "flush_packets": "1"}
_CODECS = ("libx264", "mpeg4")
SPEECH_RATE = 48_000  # the audio track's rate when it carries speech alone


def recording_fps(model_fps: float, native_fps: float | None) -> float:
    """The default frame rate of a recording: the source's, at most 30 (10 when it does not say), and
    never below the `model_fps` frames a second the chunker picks from it."""
    return max(model_fps, min(30.0, native_fps or 10.0))


class Recorder(Closeable):
    """Writes frames (with the overlay of their time drawn in) to `path`; `add` feeds commentary."""

    def __init__(
        self,
        path: str | Path,
        fps: float,
        *,
        overlay: Overlay | None = None,
        audio_rate: int | None = None,
        audio_channels: int = 1,
        speech: bool = False,
    ) -> None:
        """`audio_rate` adds an AAC track fed by `write_audio` (captured sound); `speech` one fed by
        `add_speech`, mixed into the captured sound when there is both."""
        if not fps > 0:
            raise ValueError(f"fps must be positive (got {fps})")
        self.path = Path(path)
        _, sidecar = recording_outputs(self.path).values()  # refuses a path that is not .mp4
        self.fps = fps
        self.overlay = overlay or Overlay()
        self.codec = next((name for name in _CODECS if _can_encode(name)), None)
        if self.codec is None:
            raise StreamVLMError(
                "this PyAV build can encode neither H.264 nor MPEG-4; install the 'av' wheel"
            )
        if self.codec != _CODECS[0]:
            log.warning("H.264 is not available in this PyAV build; recording MPEG-4 Part 2 instead")
        check_output(self.path, "the recording")
        folder = self.path.parent
        if not os.access(folder, os.W_OK):
            raise StreamVLMError(f"cannot record to '{self.path}': the folder '{folder}' is not writable")
        self.subtitles = SrtWriter(sidecar)
        try:
            self._container = av.open(str(self.path), mode="w", format="mp4", options=_FRAGMENTED)
        except (av.error.FFmpegError, OSError) as exc:
            self.subtitles.close()
            raise StreamVLMError(
                f"cannot record to '{self.path}' ({exc}); check the folder and its permissions"
            ) from None
        self._stream = None
        self.stopped: str | None = None  # why recording stopped early (a full disk), if it did
        self._size: tuple[int, int] | None = None
        self._last_pts = -1
        self.frames = 0
        self._lock = threading.Lock()  # video comes from capture, audio from PortAudio's thread
        self._audio = None
        self._audio_next = 0  # the sample the next block must start at
        self.audio_samples = 0
        self._captured = bool(audio_rate)  # sound comes from a device: speech is mixed into it
        self._speech: list[tuple[int, np.ndarray]] = []  # (first sample, samples) not yet mixed
        audio_rate = audio_rate or (SPEECH_RATE if speech else None)
        if audio_rate:
            self._audio = self._container.add_stream("aac", rate=audio_rate)
            self._audio.layout = "mono" if audio_channels == 1 else "stereo"
            self._audio.time_base = Fraction(1, audio_rate)

    def write(self, frame: Frame) -> None:
        """Encode one frame at its stream time; a frame no later than the previous one is dropped."""
        pts = round(frame.t * self.fps)
        if pts <= self._last_pts or self._container is None:
            return
        rgb = self.overlay.draw(frame.rgb, frame.t)
        if self._stream is None:
            self._open_stream(rgb.shape[1], rgb.shape[0])
        rgb = _fit(rgb, self._size)
        video = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        video.pts = pts
        with self._lock, self._failing(frame.t):
            self._container.mux(self._stream.encode(video))
        self._last_pts = pts
        self.frames += 1

    def write_audio(self, samples: np.ndarray, t: float) -> None:
        """Samples (float32 [n, channels]) whose first one sounds at stream time `t`. Overlaps with what
        is written are cut, gaps filled with silence, so sound stays where the picture is."""
        self._write_audio(samples, t, mix=self._captured)

    def add_speech(self, samples: np.ndarray, rate: int, t: float) -> None:
        """A spoken line (float32 mono at `rate`) whose first sample sounds at stream time `t`: the
        track itself, or mixed into the captured sound as that is written (it comes in blocks a little
        after the moment it was heard, while a line is handed over whole as it starts)."""
        if self._audio is None:
            return
        from core.speech.samples import resample

        mono = resample(samples, rate, self._audio.rate)
        block = np.repeat(mono[:, None], self._audio.layout.nb_channels, axis=1)
        if not self._captured:
            self._write_audio(block, t, mix=False)
            return
        with self._lock:
            self._speech.append((round(t * self._audio.rate), block))

    def _write_audio(self, samples: np.ndarray, t: float, *, mix: bool) -> None:
        if self._audio is None or self._container is None or self._stream is None:
            return  # sound before the first picture has no place on the stream clock yet
        rate = self._audio.rate
        start = round(t * rate)
        if start < self._audio_next:  # overlap (clock jitter): drop what was already written
            samples = samples[self._audio_next - start :]
            start = self._audio_next
        if len(samples) == 0 or start < 0:
            return
        # Captured sound starts when the device does; speech alone is placed from the stream's start.
        if start > self._audio_next and (self._audio_next > 0 or not self._captured):
            silence = np.zeros((start - self._audio_next, samples.shape[1]), np.float32)
            samples, start = np.concatenate([silence, samples]), self._audio_next
        if mix:
            samples = self._mix(samples, start)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples.T, dtype=np.float32), format="fltp", layout=self._audio.layout.name
        )
        frame.sample_rate, frame.pts = rate, start
        with self._lock, self._failing(t):
            self._container.mux(self._audio.encode(frame))
        self._audio_next = start + len(samples)
        self.audio_samples += len(samples)

    def add(self, commentary: Commentary) -> None:
        """A new line: on the picture from the end of its chunk (when a viewer sees it), and in the SRT."""
        self.overlay.add(commentary)
        self.subtitles.write(commentary)

    def _mix(self, samples: np.ndarray, start: int) -> np.ndarray:
        """`samples` (captured, from sample `start`) with the speech that sounds over them added."""
        end = start + len(samples)
        with self._lock:
            if not self._speech:
                return samples
            mixed = samples.astype(np.float32, copy=True)
            kept = []
            for first, speech in self._speech:
                a, b = max(first, start), min(first + len(speech), end)
                if a < b:
                    mixed[a - start : b - start] += speech[a - first : b - first, : mixed.shape[1]]
                if first + len(speech) > end:
                    kept.append((first, speech))  # more of it sounds later
            self._speech = kept
        return np.clip(mixed, -1.0, 1.0)

    @contextlib.contextmanager
    def _failing(self, t: float) -> Iterator[None]:
        """A write the disk refuses (full, quota, I/O error) stops the recording, not the run: the file
        written so far is left as it is (fragmented, it plays up to about a second before `t`), and the
        commentary and the other outputs go on. Called with the lock held."""
        try:
            yield
        except (OSError, av.error.FFmpegError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            self.stopped = f"recording stopped at t={t:.1f}s: cannot write '{self.path}' ({reason})"
            log.error(
                "%s; the file written so far plays, commentary and the other outputs go on", self.stopped
            )
            container, self._container = self._container, None
            with contextlib.suppress(OSError, av.error.FFmpegError):
                container.close()

    def close(self) -> None:
        if self._container is None:
            self.subtitles.close()
            return
        try:
            with self._lock:
                if self._stream is not None:
                    self._container.mux(self._stream.encode(None))  # flush the encoders
                if self._audio is not None:
                    self._container.mux(self._audio.encode(None))
        finally:
            self._container.close()
            self._container = None
            self.subtitles.close()

    def _open_stream(self, width: int, height: int) -> None:
        self._size = (width - width % 2, height - height % 2)  # 4:2:0 needs even sides
        rate = Fraction(self.fps).limit_denominator(1001)
        stream = self._container.add_stream(self.codec, rate=rate)
        stream.width, stream.height = self._size
        stream.pix_fmt = "yuv420p"
        stream.time_base = 1 / rate
        stream.gop_size = max(1, round(self.fps))  # a key frame, so a fragment, every second
        if self.codec == "libx264":
            stream.options = {"preset": "veryfast", "tune": "zerolatency"}
        self._stream = stream


def _fit(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The frame at the recording's size: cropped to even sides, or resized if the source changed size."""
    width, height = size
    if (
        rgb.shape[1] >= width
        and rgb.shape[0] >= height
        and rgb.shape[1] - width < 2
        and rgb.shape[0] - height < 2
    ):
        return rgb[:height, :width]
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.BILINEAR))


def _can_encode(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except (av.error.FFmpegError, ValueError):
        return False
    return True
