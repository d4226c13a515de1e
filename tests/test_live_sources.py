"""Live sources against real services: an RTSP server that dies and comes back, an X display under
Xvfb with a known picture on it, and this machine's cameras (none in CI)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from core.errors import SourceError
from core.media.reconnect import Backoff, SourceState
from core.media.sources import (
    CameraSource,
    FileSource,
    RtspSource,
    ScreenSource,
    list_cameras,
    list_monitors,
    open_source,
)
from livehelpers import Display, RtspServer, draw_known_picture


@pytest.fixture
def rtsp():
    server = RtspServer().start()
    yield server
    server.stop()


@pytest.fixture
def display():
    screen = Display(640, 480).start()
    yield screen
    screen.stop()


def collect(source, until, timeout: float = 60.0):
    """Iterate `source` in a thread, keeping (frame time, arrival time), until `until(frames)` or timeout."""
    frames: list[tuple[float, float, np.ndarray]] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def run():
        try:
            for frame in source:
                frames.append((frame.t, time.monotonic(), frame.rgb))
                if until(frames):
                    break
        except BaseException as exc:  # re-raised in the test
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return frames, done, errors


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


# -- RTSP -----------------------------------------------------------------------------------------------


def test_rtsp_source_reads_a_live_stream_at_the_sample_rate(rtsp):
    source = RtspSource(rtsp.url, fps=4.0)
    frames, done, errors = collect(source, lambda f: len(f) >= 12)
    assert done.wait(30), "no frames from the RTSP server"
    source.close()
    assert not errors
    times = [t for t, _, _ in frames]
    assert times == [k / 4 for k in range(12)]  # every sample time, none twice
    assert frames[0][2].shape == (240, 320, 3) and frames[0][2].dtype == np.uint8
    arrival = [a for _, a, _ in frames]
    # Live pacing: 12 samples at 4 FPS span ~2.75 s of wall time once the first arrives.
    assert arrival[-1] - arrival[0] > 2.0


def test_rtsp_source_reconnects_after_a_server_restart_and_time_keeps_increasing(rtsp):
    states: list[SourceState] = []
    source = RtspSource(
        rtsp.url,
        fps=4.0,
        backoff=Backoff(initial=0.2, factor=2.0, cap=1.0, give_up_after=30.0),
        on_state=lambda state, message: states.append(state),
        read_timeout=2.0,
    )
    frames, done, errors = collect(source, lambda f: False)
    assert wait_for(lambda: len(frames) >= 8, 30), "no frames before the restart"
    rtsp.stop()  # the server dies mid-stream
    killed_at, count_at_kill = time.monotonic(), len(frames)
    time.sleep(2.0)
    rtsp.start()  # and comes back on the same port
    assert wait_for(lambda: any(a > killed_at + 2.0 for _, a, _ in frames[count_at_kill:]), 40), (
        f"no frames after the restart; states {states}"
    )
    assert wait_for(lambda: len([a for _, a, _ in frames if a > killed_at + 2.0]) >= 6, 20)
    source.close()
    assert done.wait(10) and not errors
    times = [t for t, _, _ in frames]
    assert all(b > a for a, b in zip(times, times[1:])), "stream times must keep increasing"
    # The outage shows as one gap in stream time about as long as the server was away (2 s, less
    # the second a frame stays on screen), and no other.
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert max(gaps) >= 1.0 and sorted(gaps)[-2] == pytest.approx(0.25)
    assert SourceState.RECONNECTING in states and states[-1] is SourceState.CONNECTED


def test_unreachable_stream_fails_at_once_with_one_clear_sentence():
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"could not be opened .*check the URL and that the server"):
        RtspSource("rtsp://127.0.0.1:9/nothing", fps=2.0, open_timeout=3.0)
    assert time.monotonic() - started < 10


def test_a_stream_that_never_comes_back_fails_after_the_backoff_gives_up(rtsp):
    states = []
    source = RtspSource(
        rtsp.url,
        fps=4.0,
        backoff=Backoff(initial=0.1, factor=2.0, cap=0.4, give_up_after=2.0),
        on_state=lambda state, message: states.append((state, message)),
        read_timeout=1.0,
    )
    frames, done, errors = collect(source, lambda f: False)
    assert wait_for(lambda: len(frames) >= 2, 30)
    rtsp.stop()
    assert done.wait(30), "the source kept trying past its give-up time"
    assert len(errors) == 1 and isinstance(errors[0], SourceError)
    assert "could not be reached again" in str(errors[0])
    assert states[-1][0] is SourceState.FAILED
    delays = [m for s, m in states if s is SourceState.RECONNECTING]
    assert len(delays) >= 3 and "0.1 s" in delays[0] and "0.4 s" in delays[-1]  # exponential, capped


# -- screens --------------------------------------------------------------------------------------------


def test_screen_source_reads_back_what_is_drawn_on_a_real_display(display):
    painter = draw_known_picture()
    try:
        assert [(m.width, m.height) for m in list_monitors()] == [(640, 480)]
        with ScreenSource(1, fps=5.0) as whole:
            frame = next(iter(whole))
        assert frame.rgb.shape == (480, 640, 3)
        assert tuple(frame.rgb[100, 100]) == (255, 0, 0)  # left half red
        assert tuple(frame.rgb[100, 500]) == (0, 0, 255)  # right half blue
        assert tuple(frame.rgb[180, 250]) == (0, 255, 0)  # the green box
        with open_source("screen:1@200,150,100,60", fps=5.0) as box:
            frames = []
            for f in box:
                frames.append(f)
                if len(f.rgb) and len(frames) == 3:
                    break
        assert frames[0].rgb.shape == (60, 100, 3)
        assert (frames[0].rgb == (0, 255, 0)).all()  # exactly the box
        assert [f.t for f in frames] == [0.0, 0.2, 0.4]
    finally:
        painter.kill()


def test_screen_errors_name_what_exists(display):
    with pytest.raises(
        SourceError, match=r"monitor 3 does not exist; this display has monitors 1 \(640x480\)"
    ):
        ScreenSource(3)
    with pytest.raises(SourceError, match="not inside monitor 1"):
        open_source("screen:1@600,0,100,100")
    with pytest.raises(SourceError, match="screen:N@x,y,width,height"):
        open_source("screen:one")


def test_no_display_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert list_monitors() == []
    with pytest.raises(SourceError, match="no screen to capture"):
        ScreenSource(1)


# -- cameras --------------------------------------------------------------------------------------------


def test_cameras_open_what_opencv_opens_and_say_so_when_one_does_not():
    cameras = list_cameras()
    if not list(Path("/dev").glob("video*")):  # CI and containers: nothing to open, an empty listing
        assert cameras == []
    for camera in cameras:  # on a machine with cameras: each one listed opens and delivers a frame
        with CameraSource(camera.index, fps=2.0) as source:
            frames, done, errors = collect(source, lambda f: len(f) >= 1)
            assert done.wait(20) and not errors and frames[0][2].ndim == 3
    missing = max([c.index for c in cameras], default=-1) + 7
    with pytest.raises(SourceError, match=rf"camera {missing} could not be opened; `python -m core sources`"):
        CameraSource(missing)
    with pytest.raises(SourceError, match="camera /dev/video99 could not be opened"):
        open_source("camera:/dev/video99")


def test_camera_source_on_a_device_opencv_opens_samples_and_reconnects(tmp_path):
    """No camera in CI and no v4l2loopback in a container: OpenCV opens a video file through the same
    VideoCapture call a device path takes, which runs the reader thread, the sampling and, when the
    file runs out (as an unplugged camera stops delivering), the reconnection."""
    from core.synthetic import write_clip

    clip = write_clip(tmp_path / "cam.mp4", seconds=1.0, width=160, height=96)
    states = []
    source = open_source(f"camera:{clip}@160x96", fps=5.0, on_state=lambda state, m: states.append(state))
    assert isinstance(source, CameraSource) and source.size == (160, 96)
    source._reconnect.backoff = Backoff(initial=0.1, cap=0.2, give_up_after=10)
    frames, done, errors = collect(source, lambda f: len(f) >= 10)
    assert done.wait(30) and not errors
    source.close()
    assert [t for t, _, _ in frames] == [k / 5 for k in range(10)]
    assert frames[0][2].shape == (96, 160, 3) and frames[0][2].dtype == np.uint8
    lost = states.index(SourceState.RECONNECTING)  # the "camera" stopped delivering ...
    assert SourceState.CONNECTED in states[lost:]  # ... and was opened again


# -- --source parsing -----------------------------------------------------------------------------------


def test_open_source_picks_the_source_from_what_a_user_types(tmp_path):
    from core.synthetic import write_clip

    clip = write_clip(tmp_path / "clip.mp4", seconds=1.0)
    assert isinstance(open_source(str(clip)), FileSource)
    assert isinstance(open_source(f"file://{clip}"), FileSource)
    for spec in ("ftp://example.com/a.mp4", "gopher://x", "ws://127.0.0.1/x"):
        with pytest.raises(SourceError, match=r"sources are not supported; use a file path, camera:N"):
            open_source(spec)
