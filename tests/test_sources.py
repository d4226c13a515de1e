"""FileSource: sample times, which frame is on screen, errors, damaged files and real-time pacing.

Test clips are encoded here with PyAV. Frame i of a clip is a flat grey of level 16 + 4 * i,
so the decoded pixels say which source frame was chosen, whatever the codec noise.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from core.errors import SourceError
from core.media.sources import FileSource, Source
from core.synthetic import write_video

LEVEL0, LEVEL_STEP = 16, 4


def level_frames(n: int, height: int = 48, width: int = 64, first: int = 0):
    for i in range(first, first + n):
        yield np.full((height, width, 3), LEVEL0 + LEVEL_STEP * i, np.uint8)


def index_of(rgb: np.ndarray) -> int:
    index = round((float(rgb.mean()) - LEVEL0) / LEVEL_STEP)
    assert abs(rgb.mean() - (LEVEL0 + LEVEL_STEP * index)) < LEVEL_STEP / 2, "frame is not a flat level"
    return index


def noise_frames(n: int, seed: int = 0):
    # Noise does not compress, so every frame spans many bytes and a cut lands inside one.
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)


def write_audio(path: Path, codec: str) -> Path:
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=44100)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1152), np.float32 if codec == "aac" else np.int16),
                format="fltp" if codec == "aac" else "s16p",
                layout="mono",
            )
            frame.sample_rate, frame.pts = 44100, i * 1152
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def cut(path: Path, size: int) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:size])
    return path


# ---------------------------------------------------------------- sampling


@pytest.mark.parametrize(
    "clip_fps, n_frames, fps, suffix",
    [
        (25, 50, 2.0, ".mp4"),  # the default: 2 samples per second from a 25-fps clip
        (25, 50, 2.0, ".ts"),  # transport streams start at pts 1.4 s; times must still start at 0
        (25, 50, 2.0, ".mkv"),
        (25, 53, 2.0, ".mp4"),  # 2.12 s: the last frame is on screen at t=2.0, so 5 samples
        (25, 50, 3.0, ".mp4"),  # t=2/3 falls at frame 16.7: the frame on screen is 16, the nearest is 17
        (10, 25, 4.0, ".mp4"),
        (5, 10, 10.0, ".mp4"),  # sampling faster than the clip repeats frames
    ],
)
def test_samples_are_the_frames_on_screen_at_k_over_fps(tmp_path, clip_fps, n_frames, fps, suffix):
    path = write_video(tmp_path / f"clip{suffix}", level_frames(n_frames), clip_fps)
    with FileSource(path, fps=fps) as source:
        frames = list(source)
    clip_seconds = n_frames / clip_fps
    expected_times = [k / fps for k in range(math.ceil(clip_seconds * fps - 1e-9))]
    assert [f.t for f in frames] == expected_times  # exact: k / fps, no float drift
    assert [index_of(f.rgb) for f in frames] == [math.floor(t * clip_fps + 1e-9) for t in expected_times]
    assert all(f.rgb.dtype == np.uint8 and f.rgb.shape == (48, 64, 3) for f in frames)


def test_default_fps_gives_half_second_steps_and_declared_duration(tmp_path):
    path = write_video(tmp_path / "clip.mp4", level_frames(50), 25)
    source = FileSource(path)
    assert isinstance(source, Source)
    assert source.duration == pytest.approx(2.0)
    assert [f.t for f in source] == [0.0, 0.5, 1.0, 1.5]


def test_each_iteration_restarts_the_file_and_close_stops_it(tmp_path):
    path = write_video(tmp_path / "clip.mp4", level_frames(25), 25)
    source = FileSource(path)
    first = [index_of(f.rgb) for f in source]
    assert [index_of(f.rgb) for f in source] == first == [0, 12]
    source.close()
    source.close()  # twice is fine
    assert list(source) == []


# ---------------------------------------------------------------- errors


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "no_such_video.mp4"


def _folder(tmp_path: Path) -> Path:
    return tmp_path


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 50)
    return path


def _random_bytes(tmp_path: Path) -> Path:
    path = tmp_path / "noise.mkv"
    path.write_bytes(np.random.default_rng(0).bytes(20_000))
    return path


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.mp4"
    path.touch()
    return path


def _aac_only(tmp_path: Path) -> Path:
    return write_audio(tmp_path / "commentary.m4a", "aac")


def _mp3_only(tmp_path: Path) -> Path:
    return write_audio(tmp_path / "commentary.mp3", "mp3")


def _mp4_cut_before_index(tmp_path: Path) -> Path:
    # A plain MP4 keeps its index (moov) at the end; without it FFmpeg cannot open the file at all.
    path = write_video(tmp_path / "cut.mp4", noise_frames(10), 10)
    return cut(path, path.stat().st_size // 2)


@pytest.mark.parametrize(
    "make, words",
    [
        (_missing, ["does not exist"]),
        (_folder, ["is a folder", "pass the path of a video file"]),
        (_text, ["could not be opened as a video", "not a video file"]),
        (_random_bytes, ["could not be opened as a video"]),
        (_empty, ["could not be opened as a video"]),
        (_aac_only, ["has no video stream", "audio"]),
        (_mp3_only, ["has no video stream", "audio"]),
        (_mp4_cut_before_index, ["could not be opened as a video", "truncated"]),
    ],
    ids=lambda v: getattr(v, "__name__", "")[1:] or None,
)
def test_unreadable_inputs_raise_one_clear_source_error(tmp_path, make, words):
    path = make(tmp_path)
    with pytest.raises(SourceError) as info:
        FileSource(path)
    message = str(info.value)
    assert str(path) in message
    assert all(word in message for word in words), message
    assert "\n" not in message and "Errno" not in message  # a sentence, not a PyAV traceback
    error = info.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


# ---------------------------------------------------------------- damaged and unusual files


def _ts_torn(path: Path) -> int:
    return (path.stat().st_size // 188 // 2) * 188 + 100  # mid-way, inside a 188-byte TS packet


def _half(path: Path) -> int:
    return path.stat().st_size // 2


@pytest.mark.parametrize(
    "suffix, muxer_options, where",
    [
        (".ts", None, _ts_torn),  # no index to compare with: seen as a torn last packet
        (".mkv", None, _half),  # seen as shorter than the declared length
        (".mp4", {"movflags": "faststart"}, _half),  # index first: seen as an incomplete last packet
    ],
)
def test_truncated_video_yields_what_decodes_then_warns_once(tmp_path, caplog, suffix, muxer_options, where):
    path = write_video(tmp_path / f"clip{suffix}", noise_frames(50), 25, container_options=muxer_options)
    cut(path, where(path))
    with caplog.at_level(logging.WARNING, logger="core.media.sources"):
        frames = list(FileSource(path, fps=10))
    assert 3 <= len(frames) < 20  # the whole clip would give 20
    assert [f.t for f in frames] == [k / 10 for k in range(len(frames))]
    warnings = [r for r in caplog.records if r.name == "core.media.sources" and r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert "ended early at t=" in message and str(path) in message
    ended_at = float(message.split("t=")[1].split("s")[0])
    assert frames[-1].t <= ended_at < 2.0


def test_resolution_change_mid_stream_yields_both_sizes_in_order(tmp_path):
    # Byte-concatenated transport streams: the second segment's timestamps restart from zero.
    first = write_video(tmp_path / "a.ts", level_frames(10, 48, 64), 10)
    second = write_video(tmp_path / "b.ts", level_frames(10, 64, 96, first=20), 10)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    frames = list(FileSource(joined, fps=2))
    assert [f.t for f in frames] == [0.0, 0.5, 1.0, 1.5]
    assert [f.rgb.shape for f in frames] == [(48, 64, 3)] * 2 + [(64, 96, 3)] * 2
    assert [index_of(f.rgb) for f in frames] == [0, 5, 20, 25]


# ---------------------------------------------------------------- real-time pacing


def test_realtime_yields_no_frame_before_its_time(tmp_path):
    path = write_video(tmp_path / "clip.mp4", level_frames(15), 10)  # 1.5 s: samples at 0, 0.5, 1.0
    start = time.monotonic()
    arrivals = [(f.t, time.monotonic() - start) for f in FileSource(path, fps=2, realtime=True)]
    assert [t for t, _ in arrivals] == [0.0, 0.5, 1.0]
    assert all(arrived >= t - 0.02 for t, arrived in arrivals)  # loose: sleeps never end early by much
    assert arrivals[-1][1] >= 0.95


def test_close_from_another_thread_ends_realtime_iteration_promptly(tmp_path):
    path = write_video(tmp_path / "clip.mp4", level_frames(40), 5)  # 8 s of video
    source = FileSource(path, fps=2, realtime=True)
    threading.Timer(0.3, source.close).start()
    start = time.monotonic()
    frames = list(source)
    assert time.monotonic() - start < 2.0
    assert 1 <= len(frames) < 16
