"""Issue 21, fault 6 for the app: SIGINT and SIGTERM to the real `python -m app` under Xvfb (the tiny
model, a synthetic clip paced like a live feed, recording on). The first signal stops the run as Stop
does: the recording's .srt holds every cue so far and the MP4 plays to where the stream got; the window
closes and the process exits with 128 + the signal. A second SIGINT while the first's clean-up is held
up quits at once. (`python -m core run` and `serve`: tests/test_faults_signals.py.)"""

from __future__ import annotations

import logging
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import av
import pytest
import srt

from conftest import SMALL_STREAM
from core.engine import StreamingEngine
from core.synthetic import synthetic_frames, write_video
from livehelpers import ROOT, Display, app_env, need
from serverhelpers import GREEDY, RunningServer, no_sessions_left

pytest.importorskip("PySide6")


class App:
    """`python -m app ARGS` on the display, its stderr read in a thread (so its log never fills a pipe)."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app", *args],
            env=app_env("xcb"),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)

    @property
    def err(self) -> str:
        return "".join(self.lines)

    def wait_for(self, ready, what: str, timeout: float = 120) -> None:
        """Until `ready()` holds; fails saying `what` with the app's log if the app ends or time runs out."""
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.process.poll() is None, f"the app ended before {what}:\n{self.err[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} in {timeout} s:\n{self.err[-3000:]}"
            time.sleep(0.1)

    def exit_code(self, timeout: float) -> int:
        """The exit status, which must come within `timeout` seconds (the signal's handling is bounded)."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the app did not exit within {timeout} s:\n{self.err[-3000:]}")
        self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def display():
    screen = Display(800, 600).start()
    yield screen
    screen.stop()


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """60 s of synthetic scene: longer than any run here lasts before its signal."""
    path = tmp_path_factory.mktemp("app-signals") / "scene.mp4"
    write_video(path, synthetic_frames(160, 96, 8, 60), 8)
    return path


def cues(path: Path) -> list[srt.Subtitle]:
    try:
        return list(srt.parse(path.read_text()))
    except (OSError, srt.SRTParseError):  # not there yet, or a cue half written
        return []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signal_stops_the_run_closes_the_recording_and_the_window(
    tiny_dir, long_clip, tmp_path, display, sig
):
    folder = tmp_path / "recordings"
    folder.mkdir()
    config = tmp_path / "engine.toml"
    config.write_text("[generation]\nmin_new_tokens = 2\n")  # every chunk says something: a cue each
    app = App(
        "--model",
        "tiny",
        "--source",
        str(long_clip),
        "--record",
        str(folder),
        "--start",
        "--config",
        str(config),
    )
    try:
        subtitles = lambda: next(folder.glob("*.srt"), folder / "none.srt")  # noqa: E731
        app.wait_for(lambda: len(cues(subtitles())) >= 3, "three cues in the recording's .srt")
        before = len(cues(subtitles()))
        app.process.send_signal(sig)
        code = app.exit_code(timeout=60)
    finally:
        app.kill()
    err = app.err
    assert code == 128 + sig, err[-3000:]
    assert f"stopping on {sig.name}" in err and f"stopped on {sig.name}" in err, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    written = cues(subtitles())
    assert len(written) >= before, (len(written), before)
    streamed = written[-1].end.total_seconds()
    [recording] = folder.glob("*.mp4")
    # The recording plays to its end (decoded here to its last frame, without an error) and holds every
    # frame the cues were made from: the frames are 0.5 s apart and a chunk is cut at its last one. Past
    # the last cue it may hold the frames of the chunk the signal cut short, no more than a few seconds.
    with av.open(str(recording)) as container:
        stream = container.streams.video[0]
        last = max(float(frame.pts * stream.time_base) for frame in container.decode(stream))
    assert streamed - 0.6 <= last <= streamed + 5.0, (last, streamed)


def test_a_signal_to_a_remote_run_closes_its_session_as_stop_does(
    tiny_model, long_clip, tmp_path, display, caplog
):
    """The app streams to a server: the signal closes the session with a close handshake (1000), so the
    server ends it at once and logs why, rather than finding a dropped connection."""
    caplog.set_level(logging.INFO, logger="core.remote.server")
    engine = StreamingEngine(tiny_model, stream=SMALL_STREAM, generation=replace(GREEDY, min_new_tokens=2))
    server = RunningServer(engine, budget=30.0)
    folder = tmp_path / "recordings"
    folder.mkdir()
    app = App("--model", server.url, "--source", str(long_clip), "--record", str(folder), "--start")
    try:
        subtitles = lambda: next(folder.glob("*.srt"), folder / "none.srt")  # noqa: E731
        app.wait_for(lambda: len(cues(subtitles())) >= 2, "two cues in the recording's .srt")
        app.process.send_signal(signal.SIGTERM)
        code = app.exit_code(timeout=60)
        assert no_sessions_left(server, timeout=10)
    finally:
        app.kill()
        server.stop()
    assert code == 128 + signal.SIGTERM, app.err[-3000:]
    closed = [r.getMessage() for r in caplog.records if " closed: " in r.getMessage()]
    assert len(closed) == 1 and "received 1000 (OK)" in closed[0], closed
    assert len(cues(subtitles())) >= 2


def test_a_signal_closes_an_idle_window_at_once(tiny_dir, display):
    """No run, nothing for Qt to do: the event loop sleeps in C, and the signal still acts at once (the
    wake-up socket), not at the next event."""
    need(shutil.which("xwininfo") is not None, "apt-get install x11-utils")
    app = App("--model", "tiny")
    try:

        def window_shown() -> bool:
            tree = subprocess.run(["xwininfo", "-root", "-tree"], capture_output=True, text=True).stdout
            return re.search(r'^\s*0x[0-9a-f]+ "streamvlm[^"]*": \(', tree, re.MULTILINE) is not None

        app.wait_for(window_shown, "window on the display", 60)
        time.sleep(1.0)  # the window painted and the event loop asleep
        app.process.send_signal(signal.SIGTERM)
        code = app.exit_code(timeout=10)
    finally:
        app.kill()
    assert code == 128 + signal.SIGTERM, app.err[-3000:]
    assert "stopped on SIGTERM" in app.err and "Traceback" not in app.err, app.err[-3000:]


def test_a_second_sigint_quits_at_once(long_clip, display):
    """The first SIGINT's stop is held up: the app connects to a 'server' that accepts the connection and
    never answers the handshake (the client waits up to 30 s); the second SIGINT ends the process."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        app = App("--model", f"ws://127.0.0.1:{port}", "--source", str(long_clip), "--start")
        try:
            silent.settimeout(120)
            connection, _ = silent.accept()  # the run is connecting: its worker waits on this socket
            with connection:
                app.process.send_signal(signal.SIGINT)
                app.wait_for(lambda: "stopping on SIGINT" in app.err, "line saying the app is stopping", 30)
                app.process.send_signal(signal.SIGINT)
                code = app.exit_code(timeout=15)  # well before the client's 30 s handshake timeout
        finally:
            app.kill()
    err = app.err
    assert code == 130, err[-3000:]
    assert "SIGINT again: quitting at once" in err and "Traceback" not in err, err[-3000:]
    assert "stopped on SIGINT" not in err, err[-3000:]  # the clean-up did not get to its end
