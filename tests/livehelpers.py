"""Real services for the live-source tests: an RTSP server (GStreamer) and an X display (Xvfb).

Both come from Debian's packages, which `.ci/run` installs. Where they are missing outside CI the
tests that need them are skipped with the install command; in CI (CI=true) they fail instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, which has the GStreamer bindings


def app_env(platform: str) -> dict[str, str]:
    """The environment an app subprocess runs in: this run's (so its isolated settings and caches,
    see conftest.py) with the Qt platform plugin chosen and the repository importable."""
    return {**os.environ, "QT_QPA_PLATFORM": platform, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def user_files() -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file where streamvlm would keep the user's own things: its settings,
    its cache (`--model tiny`) and the app's default recording folder, for before/after checks."""
    from conftest import REAL_CACHE, REAL_CONFIG, REAL_HOME

    found = {}
    for folder in (REAL_CONFIG / "streamvlm", REAL_CACHE / "streamvlm", REAL_HOME / "Videos"):
        for path in folder.rglob("*") if folder.is_dir() else ():
            if path.is_file():
                stat = path.stat()
                found[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return found


def need(ok: bool, what: str) -> None:
    if not ok:
        message = f"needs {what}"
        if os.environ.get("CI"):
            pytest.fail(message + " (.ci/run installs it)")
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RtspServer:
    """gst-rtsp-server on loopback serving a generated clip at rtsp://127.0.0.1:PORT/live."""

    def __init__(self, port: int | None = None, size: tuple[int, int] = (320, 240), fps: int = 10) -> None:
        probe = (
            subprocess.run(
                [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0')"],
                capture_output=True,
            )
            if Path(SYSTEM_PYTHON).exists()
            else None
        )
        need(
            probe is not None and probe.returncode == 0,
            "GStreamer's RTSP server: apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 "
            "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly",
        )
        self.port = port or free_port()
        self.args = [str(v) for v in (*size, fps)]
        self.url = f"rtsp://127.0.0.1:{self.port}/live"
        self.process: subprocess.Popen | None = None

    def start(self) -> RtspServer:
        import tempfile

        log = tempfile.TemporaryFile("w+")  # not a pipe: nobody reads it while the server runs
        self.process = subprocess.Popen(
            [SYSTEM_PYTHON, str(HERE / "live" / "rtsp_server.py"), str(self.port), *self.args],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            self.stop()
            log.seek(0)
            raise RuntimeError(f"the RTSP server did not start: {line} {log.read()[-2000:]}")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


class Display:
    """An Xvfb X display of the given size, with DISPLAY pointing at it while it runs."""

    def __init__(self, width: int = 640, height: int = 480) -> None:
        need(shutil.which("Xvfb") is not None, "Xvfb: apt-get install xvfb")
        self.size = (width, height)
        self.number = 100 + os.getpid() % 400
        self.process: subprocess.Popen | None = None
        self.previous: str | None = None

    def start(self) -> Display:
        width, height = self.size
        self.process = subprocess.Popen(
            ["Xvfb", f":{self.number}", "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        socket_path = Path(f"/tmp/.X11-unix/X{self.number}")
        deadline = time.monotonic() + 10
        while not socket_path.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("Xvfb did not start")
            time.sleep(0.05)
        self.previous = os.environ.get("DISPLAY")
        os.environ["DISPLAY"] = f":{self.number}"
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
        if self.previous is None:
            os.environ.pop("DISPLAY", None)
        else:
            os.environ["DISPLAY"] = self.previous


# A Tk window covering the display with known colours: the left half red, the right half blue, and
# a green 100x60 box at (200, 150). Prints "drawn" once it is on screen, then waits to be killed.
DRAW = """
import tkinter as tk
root = tk.Tk()
root.overrideredirect(True)
w, h = root.winfo_screenwidth(), root.winfo_screenheight()
root.geometry(f"{w}x{h}+0+0")
canvas = tk.Canvas(root, width=w, height=h, highlightthickness=0, bd=0)
canvas.pack()
canvas.create_rectangle(0, 0, w // 2, h, fill="#ff0000", width=0)
canvas.create_rectangle(w // 2, 0, w, h, fill="#0000ff", width=0)
canvas.create_rectangle(200, 150, 300, 210, fill="#00ff00", width=0)
root.update()
root.after(300, lambda: print("drawn", flush=True))
root.mainloop()
"""


def draw_known_picture() -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", DRAW], stdout=subprocess.PIPE, text=True)
    if process.stdout.readline().strip() != "drawn":
        process.kill()
        raise RuntimeError("the Tk window did not draw")
    return process


class SoundServer:
    """A PulseAudio server with one virtual output ("virt") whose monitor is an input device: what
    is played into it with paplay can be recorded through PortAudio's ALSA "pulse" device."""

    def __init__(self, folder: Path) -> None:
        if not (shutil.which("pulseaudio") and shutil.which("paplay")):
            pytest.skip(
                "needs a sound server for a virtual input: apt-get install pulseaudio pulseaudio-utils libasound2-plugins"
            )
        self.socket = folder / "native"
        self.process: subprocess.Popen | None = None

    def start(self) -> SoundServer:
        self.process = subprocess.Popen(
            [
                "pulseaudio",
                "--daemonize=no",
                "--exit-idle-time=-1",
                "-n",
                "--load=module-null-sink sink_name=virt",
                f"--load=module-native-protocol-unix socket={self.socket}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("pulseaudio did not start")
            time.sleep(0.05)
        return self

    @property
    def env(self) -> dict[str, str]:
        return {"PULSE_SERVER": f"unix:{self.socket}", "PULSE_SOURCE": "virt.monitor", "PULSE_SINK": "virt"}

    def play(self, wav: Path) -> None:
        subprocess.run(["paplay", str(wav)], env={**os.environ, **self.env}, check=True, timeout=30)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
