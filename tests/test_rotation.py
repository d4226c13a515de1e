"""Rotation metadata: a phone clip stored sideways reaches the model, the overlay and the recording upright.

Phones store the sensor's landscape picture and say in a display matrix (the MP4/MOV `tkhd` matrix,
or Matroska's projection) how players turn it. Test clips here are plain MP4s whose `tkhd` matrix is
then set by hand, as a phone writes it, so they need no particular PyAV or FFmpeg version to make.
Every reader of video in the project is checked: the file and stream sources (core.media.sources), the
trainer's clip reader and the evals' frame reader. The picture is asymmetric under every turn and
mirror (a white top-left quadrant, a grey strip across the top-right), so a wrong orientation shows.
"""

from __future__ import annotations

import functools
import http.server
import io
import itertools
import math
import shutil
import struct
import subprocess
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from core.media.reconnect import Backoff
from core.media.sources import FileSource, RtspSource
from core.synthetic import write_video
from livehelpers import need

HEIGHT, WIDTH = 48, 64  # stored landscape, as a phone's sensor gives it
FPS = 10
ONE = 1 << 16  # 1.0 in the matrix's 16.16 fixed point
W_ONE = 1 << 30  # 1.0 in its 2.30 third column


def picture(level: int = 0, scale: int = 1) -> np.ndarray:
    height, width = HEIGHT * scale, WIDTH * scale
    rgb = np.full((height, width, 3), level, np.uint8)
    rgb[: height // 2, : width // 2] = 255
    rgb[: height // 4, width // 2 :] = 128
    return rgb


def matrix(ccw: int, hflip: bool = False, vflip: bool = False) -> tuple[int, ...]:
    """FFmpeg's display matrix for a turn of `ccw` degrees counter-clockwise, then the mirrors."""
    cos, sin = round(math.cos(math.radians(ccw))), round(math.sin(math.radians(ccw)))
    a, b, c, d = cos * ONE, -sin * ONE, sin * ONE, cos * ONE
    if hflip:  # libavutil's av_display_matrix_flip: negate the first column
        a, c = -a, -c
    if vflip:  # and the second
        b, d = -b, -d
    return (a, b, 0, c, d, 0, 0, 0, W_ONE)


def upright(rgb: np.ndarray, ccw: int, hflip: bool = False, vflip: bool = False) -> np.ndarray:
    """What a player shows: the stored picture turned `ccw` degrees, then mirrored."""
    out = np.rot90(rgb, (ccw // 90) % 4)
    if hflip:
        out = out[:, ::-1]
    if vflip:
        out = out[::-1]
    return out


def set_tkhd_matrix(path: Path, values: tuple[int, ...]) -> Path:
    """Write a display matrix into the MP4/MOV track header, where phones keep it."""
    data = bytearray(path.read_bytes())
    box = data.find(b"tkhd")
    assert box > 0 and data.find(b"tkhd", box + 4) < 0, "expected one track"
    version = data[box + 4]
    # tkhd: version+flags, times/track/duration (20 or 32 bytes), reserved/layer/group/volume (16).
    at = box + 8 + (32 if version == 1 else 20) + 16
    data[at : at + 36] = struct.pack(">9i", *values)
    path.write_bytes(bytes(data))
    return path


def rotated_clip(
    path: Path,
    ccw: int,
    hflip: bool = False,
    vflip: bool = False,
    seconds: float = 1.0,
    scale: int = 1,
    **options,
) -> Path:
    """Frame i is `picture(level(i), scale)`, stored as is, with a matrix saying how to show it."""
    frames = [picture(level(i), scale) for i in range(round(seconds * FPS))]
    write_video(path, frames, FPS, **options)
    return set_tkhd_matrix(path, matrix(ccw, hflip, vflip))


def level(index: int) -> int:
    """The background level of frame `index`, so a test can tell which frame it got."""
    return 2 * index


def assert_shows(rgb: np.ndarray, expected: np.ndarray) -> None:
    assert rgb.shape == expected.shape, f"shown as {rgb.shape[:2]}, players show {expected.shape[:2]}"
    diff = np.abs(rgb.astype(int) - expected.astype(int)).mean()
    assert diff < 6, f"the picture is turned the wrong way (mean difference {diff:.1f})"


def ffmpeg_shows(path: Path) -> np.ndarray:
    """The first frame as the ffmpeg command line shows it (it turns frames by default)."""
    from PIL import Image

    need(shutil.which("ffmpeg") is not None, "the ffmpeg command: apt-get install ffmpeg")
    png = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "image2pipe", "-c:v", "png", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


# (degrees counter-clockwise, hflip, vflip): the turns phones write (an iPhone's portrait is -90, the
# same matrix as 270), and mirrored matrices (front cameras, editing apps), which players also honour.
ORIENTATIONS = [
    (90, False, False),
    (180, False, False),
    (270, False, False),
    (-90, False, False),
    (0, True, False),
    (0, False, True),
    (90, True, False),
    (90, False, True),
]
IDS = [f"{ccw}{'-hflip' if h else ''}{'-vflip' if v else ''}" for ccw, h, v in ORIENTATIONS]


# ---------------------------------------------------------------- the file source


@pytest.mark.parametrize("ccw, hflip, vflip", ORIENTATIONS, ids=IDS)
def test_file_source_shows_a_rotated_clip_as_players_do(tmp_path, ccw, hflip, vflip):
    path = rotated_clip(tmp_path / "phone.mp4", ccw, hflip, vflip)
    with FileSource(path, fps=2) as source:
        frames = list(source)
    assert [f.t for f in frames] == [0.0, 0.5]
    for frame, index in zip(frames, (0, 5)):
        assert_shows(frame.rgb, upright(picture(level(index)), ccw, hflip, vflip))
    assert_shows(frames[0].rgb, ffmpeg_shows(path))  # the reference: ffmpeg's own autorotate
    assert frames[0].rgb.flags.c_contiguous  # torch.from_numpy and the recorder need that


def test_a_quarter_turn_makes_portrait_frames_and_keeps_time_duration_and_rate(tmp_path):
    plain = write_video(tmp_path / "plain.mp4", [picture(level(i)) for i in range(20)], FPS)
    phone = rotated_clip(tmp_path / "phone.mov", -90, seconds=2.0)  # an iPhone's portrait clip
    with FileSource(plain, fps=4) as a, FileSource(phone, fps=4) as b:
        plain_frames, phone_frames = list(a), list(b)
        assert (b.duration, b.native_fps) == (a.duration, a.native_fps) == (pytest.approx(2.0), 10.0)
    assert [f.t for f in phone_frames] == [f.t for f in plain_frames] == [k / 4 for k in range(8)]
    # Portrait: the frame size is what the recorder and the overlay use.
    assert {f.rgb.shape for f in phone_frames} == {(WIDTH, HEIGHT, 3)}
    for shown, stored in zip(phone_frames, plain_frames):  # the same frame at each time, turned
        assert_shows(shown.rgb, np.rot90(stored.rgb, -1))


def test_matroska_display_matrix_is_honoured(tmp_path):
    path = tmp_path / "phone.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        if not hasattr(stream, "set_display_matrix"):
            pytest.skip("writing a Matroska display matrix needs a newer PyAV")
        stream.set_display_matrix(list(matrix(90)))
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(picture(), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    assert_shows(next(iter(FileSource(path))).rgb, upright(picture(), 90))


@pytest.mark.parametrize(
    "tag, clockwise", [("90", 90), ("270", 270), ("-90", 270), ("180", 180), ("0", 0), ("sideways", 0)]
)
def test_legacy_rotate_tag_turns_clockwise_when_there_is_no_matrix(tmp_path, tag, clockwise):
    # Old FFmpeg wrote `rotate` (clockwise degrees); Matroska keeps it as a ROTATE tag.
    path = tmp_path / "old.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.metadata["rotate"] = tag
        for i in range(5):
            frame = av.VideoFrame.from_ndarray(picture(), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    assert_shows(next(iter(FileSource(path))).rgb, upright(picture(), -clockwise))


def test_orientation_is_read_from_the_matrix_as_ffmpeg_reads_it(tmp_path):
    # Each frame carries the matrix; the decision uses its exact entries (mirrors included).
    from core.media.orientation import display_orientation

    path = rotated_clip(tmp_path / "phone.mp4", 90, hflip=True)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frame = next(container.decode(stream))
        assert display_orientation(frame, stream) == (3, True)  # mirror, then three quarter turns CCW


# ---------------------------------------------------------------- a stream URL (the same PyAV decoding)


@pytest.fixture
def http_folder(tmp_path):
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def test_a_stream_url_shows_a_rotated_clip_upright(http_folder):
    folder, base = http_folder
    # faststart: the index first, so the clip plays as it downloads, like a live feed.
    rotated_clip(folder / "phone.mp4", 90, seconds=4.0, container_options={"movflags": "faststart"})
    # A live source starts wherever the feed is once probed. Give up fast, not hang, if no frame comes.
    source = RtspSource(f"{base}/phone.mp4", fps=2, backoff=Backoff(initial=0.1, give_up_after=2.0))
    with source:
        frames = list(itertools.islice(source, 3))
    assert [f.t for f in frames] == [0.0, 0.5, 1.0]
    for frame in frames:
        index = round(float(np.median(frame.rgb[-8:, -8:])) / level(1))  # the background says which frame
        assert_shows(frame.rgb, upright(picture(level(index)), 90))


# ---------------------------------------------------------------- the trainer's and the evals' readers


def test_trainer_clip_reader_returns_upright_frames_after_a_seek(tmp_path):
    import torch
    import torchvision.transforms.v2.functional as tvF

    from trainer.data.video import FrameBudget, read_clip

    path = rotated_clip(tmp_path / "phone.mp4", -90, seconds=4.0)
    clip = read_clip(path, 2.0, 3.0, FrameBudget())  # starts past 1 s: the reader seeks
    height, width = clip.size
    assert height > width, f"the clip came out {width}x{height}: landscape, as stored"
    assert clip.duration == pytest.approx(4.0)
    assert clip.ends[0] == pytest.approx(2.0)  # the frames of the window, not of the start
    for frame, end in zip(clip.frames, clip.ends):
        stored = picture(level(round(end * FPS) - 1))  # ends are frame END times
        expected = torch.from_numpy(upright(stored, -90).copy()).permute(2, 0, 1)
        expected = tvF.resize(
            expected, [height, width], interpolation=tvF.InterpolationMode.BICUBIC, antialias=True
        )
        assert_shows(frame.permute(1, 2, 0).numpy(), expected.permute(1, 2, 0).numpy())


def test_evals_frame_reader_returns_upright_frames_after_a_seek(tmp_path):
    from evals.video import duration, frames_at

    path = rotated_clip(tmp_path / "phone.mp4", 90, seconds=3.0)
    assert duration(path) == pytest.approx(3.0)
    frames = list(frames_at(path, [1.5, 2.0, 2.5]))  # past 1 s: the reader seeks
    assert [f.t for f in frames] == [1.5, 2.0, 2.5]
    for frame, index in zip(frames, (15, 20, 25)):
        assert_shows(frame.rgb, upright(picture(level(index)), 90))


# ---------------------------------------------------------------- end to end: the recording


def test_run_records_a_rotated_phone_clip_in_portrait(tmp_path):
    from clihelpers import run_cli

    # An iPhone's portrait clip, large enough that the burned-in commentary leaves the top clear.
    clip = rotated_clip(tmp_path / "phone.mp4", -90, seconds=2.0, scale=5)
    out = tmp_path / "out.mp4"
    result = run_cli(
        "run", "--source", str(clip), "--model", "tiny", "--record", str(out), "--device", "cpu", "--quiet"
    )
    assert result.returncode == 0, result.stderr
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) >= 10
    for k, rgb in enumerate(frames):  # recorded at the clip's 10 FPS: frame k is source frame k
        expected = upright(picture(level(k), scale=5), -90)
        assert rgb.shape == expected.shape  # 240 wide, 320 high: portrait
        # The commentary is burned in from the bottom up; the top quarter is the picture itself.
        assert_shows(rgb[: rgb.shape[0] // 4], expected[: rgb.shape[0] // 4])
