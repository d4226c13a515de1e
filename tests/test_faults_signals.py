"""Issue 21, fault 6: SIGINT and SIGTERM to `python -m core run` and `python -m core serve`, the real
commands in subprocesses (tiny model). The first signal stops cleanly: the subtitle files are complete
and valid, the recording is closed and plays to where the stream got, the server's clients are told
why their session closed (1001, "server shutting down"), and one line says what happens. A second
signal quits at once."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import av
import numpy as np
import pytest
import srt
import webvtt
from PIL import Image
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from clihelpers import ROOT
from conftest import random_frames
from core.remote import protocol as p
from core.synthetic import synthetic_frames, write_video

SIGNALS = [signal.SIGINT, signal.SIGTERM]


def start_cli(*args: str) -> subprocess.Popen:
    """`python -m core ARGS` started in a subprocess (offline), stdout and stderr piped as text."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "core", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def lines_until(stream, wanted, timeout: float = 120) -> list[str]:
    """Lines read from `stream` until one for which `wanted(line)` holds (AssertionError on end or time)."""
    seen: list[str] = []
    found = threading.Event()

    def read() -> None:
        for line in stream:
            seen.append(line)
            if wanted(line):
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    assert found.wait(timeout), "".join(seen)
    return seen


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """60 s of synthetic scene: longer than any run here lasts before its signal."""
    path = tmp_path_factory.mktemp("signals") / "scene.mp4"
    write_video(path, synthetic_frames(160, 96, 8, 60), 8)
    return path


def start_run(clip: Path, out: Path) -> subprocess.Popen:
    return start_cli(
        "run",
        "--source",
        str(clip),
        "--model",
        "tiny",
        "--device",
        "cpu",
        "--realtime",  # paced like a live feed: the signal comes mid-stream
        "--min-new-tokens",
        "2",
        "--srt",
        str(out / "out.srt"),
        "--vtt",
        str(out / "out.vtt"),
        "--jsonl",
        str(out / "out.jsonl"),
        "--record",
        str(out / "rec.mp4"),
    )


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_signal_to_run_closes_the_subtitles_and_the_recording(tiny_dir, long_clip, tmp_path, sig):
    process = start_run(long_clip, tmp_path)
    try:
        printed = lines_until(process.stdout, lambda line: line.startswith("[00:00:03"))
        process.send_signal(sig)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + sig, err
    assert f"stopping on {sig.name}" in err and "Traceback" not in err, err
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    subs = list(srt.parse((tmp_path / "out.srt").read_text()))
    cues = list(webvtt.read(str(tmp_path / "out.vtt")))
    assert len(lines) == len(subs) == len(cues) >= len([x for x in printed if x.startswith("[")])
    streamed = lines[-1]["end"]
    # The recording holds every frame the chunks were cut from, to the last one (the model's frames are
    # 0.5 s apart: a chunk is cut at its last one): a killed process loses the fragment in progress
    # and the encoder's queue (a second or more).
    with av.open(str(tmp_path / "rec.mp4")) as container:
        stream = container.streams.video[0]
        last = max(float(frame.pts * stream.time_base) for frame in container.decode(stream))
    assert streamed - 0.6 <= last <= streamed + 3.0, (last, streamed)
    assert len(list(srt.parse((tmp_path / "rec.srt").read_text()))) == len(lines)


def test_a_second_sigint_quits_at_once(tiny_dir):
    """The first SIGINT's clean-up is held up by a client that never answers the server's close (the
    server waits 10 s for it); the second ends the process at once."""
    process, url = start_serve()
    try:
        host, port = url.removeprefix("ws://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as silent:
            key = base64.b64encode(os.urandom(16)).decode()
            silent.sendall(
                f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            assert silent.recv(4096).startswith(b"HTTP/1.1 101")
            process.send_signal(signal.SIGINT)
            seen = lines_until(process.stderr, lambda line: "stopping on SIGINT" in line)
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    err = "".join(seen) + err
    assert process.returncode == 130, err
    assert "SIGINT again: quitting at once" in err and "Traceback" not in err, err
    assert "stopped on SIGINT" not in err, err  # the clean-up did not get to its end


def png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def start_serve() -> tuple[subprocess.Popen, str]:
    process = start_cli("serve", "--model", "tiny", "--device", "cpu", "--port", "0", "--max-sessions", "2")
    printed = lines_until(process.stdout, lambda line: line.startswith("serving "))
    return process, printed[-1].split(" at ")[-1].strip()


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_signal_to_serve_tells_every_client_why_its_session_closed(tiny_dir, sig):
    process, url = start_serve()
    try:
        with connect(url, open_timeout=30) as ws, connect(url, open_timeout=30) as idle:
            for client in (ws, idle):
                client.send(p.encode("hello", version=p.VERSION))
                p.decode(client.recv(timeout=60), ("ready",))
            frame = png(random_frames(np.random.default_rng(0), 64, 64, 1)[0])
            for second in range(2):  # a session that has streamed, and one that has not
                ws.send(p.encode("chunk", t_start=float(second), t_end=second + 1.0, frames=1))
                ws.send(frame)
                while p.decode(ws.recv(timeout=60), ("commentary", "chunk_done"))["type"] != "chunk_done":
                    pass
            process.send_signal(sig)
            for client in (ws, idle):
                with pytest.raises(ConnectionClosed) as closed:
                    client.recv(timeout=30)
                assert closed.value.rcvd is not None, "the connection dropped without a close frame"
                assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1001, "server shutting down")
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + sig, err
    assert f"stopping on {sig.name}" in err and "Traceback" not in err, err
