"""What capture alone costs on this machine: decoding 720p H.264 from a file as fast as it goes, and
reading a live 720p RTSP stream at 25 FPS sampled at 2 FPS (no model).

    python evals/scripts/capture_cpu.py [--seconds 15]

Needs FFmpeg (to write the test clip) and GStreamer's RTSP server (tests/livehelpers.py), both
from Debian's packages. Prints frames per second decoded and CPU use (100% = one core).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from core.cli_args import number  # noqa: E402
from core.media.sources import FileSource, RtspSource  # noqa: E402
from livehelpers import RtspServer  # noqa: E402


def cpu_of(run) -> tuple[float, float, int]:
    """(wall seconds, CPU percent of this process over the run, what `run` returned)."""
    process = psutil.Process()
    before, started = process.cpu_times(), time.monotonic()
    result = run()
    after, wall = process.cpu_times(), time.monotonic() - started
    used = (after.user - before.user) + (after.system - before.system)
    return wall, 100 * used / wall, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=number(0, 3600, low_open=True), default=15.0)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "720p25.mp4"
        subprocess.run(
            [
                "ffmpeg",
                "-loglevel",
                "error",
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=1280x720:rate=25",
                "-t",
                str(args.seconds),
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-pix_fmt",
                "yuv420p",
                str(clip),
            ],
            check=True,
        )

        def decode_file():
            with FileSource(clip, fps=2.0) as source:
                return sum(1 for _ in source)

        wall, cpu, samples = cpu_of(decode_file)
        decoded = 25 * args.seconds
        rows.append(
            ("file, 720p H.264, as fast as it decodes", f"{decoded / wall:.0f}", f"{cpu:.0f}%", samples)
        )

    server = RtspServer(size=(1280, 720), fps=25).start()
    try:

        def read_live():
            with RtspSource(server.url, fps=2.0) as source:
                first = None
                n = 0
                for _frame in source:
                    n += 1
                    first = first or time.monotonic()
                    if time.monotonic() - first >= args.seconds:
                        return n
            return n

        wall, cpu, samples = cpu_of(read_live)
        rows.append(("RTSP, 720p 25 FPS live, sampled at 2 FPS", "25 (live rate)", f"{cpu:.0f}%", samples))
    finally:
        server.stop()

    print(f"{psutil.cpu_count()} CPU threads")
    print("| capture | frames decoded per second | CPU (100% = one core) | samples |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")


if __name__ == "__main__":
    main()
