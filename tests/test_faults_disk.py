"""Disk full while recording and writing subtitles (issue 21, fault 2).

A real full disk: a child process in a user and mount namespace of its own (`unshare`) mounts a
small tmpfs, records and writes subtitles to it until it fills, with a JSON-lines writer on the
ordinary disk beside them. The recording must stop with one message and play as far as it got,
the subtitles on the full disk keep their complete cues, and the other writer goes on to the end.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import json, logging, subprocess, sys
    import numpy as np
    from pathlib import Path
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    from core.media.recorder import Recorder
    from core.media.subtitles import JsonlWriter, VttWriter
    from core.types import Commentary, Frame

    full, other = Path(sys.argv[1]), Path(sys.argv[2])
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)], check=True)
    rng = np.random.default_rng(0)
    recorder = Recorder(full / "rec.mp4", 4.0)
    vtt, jsonl = VttWriter(full / "out.vtt"), JsonlWriter(other / "out.jsonl")
    for k in range(120):  # 30 s of noise: far more than 256 kB of H.264
        recorder.write(Frame(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), k / 4))
        if k % 4 == 3:
            line = Commentary(k // 4, k // 4 + 1, "word " * 40)
            recorder.add(line)
            vtt.write(line)
            jsonl.write(line)
    recorder.close(); vtt.close(); jsonl.close()
    from core.media.sources import FileSource  # plays it as a player does, to its last whole fragment
    with FileSource(full / "rec.mp4", 4.0) as played:
        frames = sum(1 for _ in played)
    print(json.dumps({"stopped": recorder.stopped, "vtt_stopped": vtt.stopped, "played": frames,
                      "vtt": (full / "out.vtt").read_text(), "srt": (full / "rec.srt").read_text()}))
    """
)


def test_a_full_disk_stops_the_recording_and_its_subtitles_but_not_the_other_outputs(tmp_path):
    unshare = shutil.which("unshare")
    probe = (
        subprocess.run([unshare, "--user", "--map-root-user", "--mount", "true"], capture_output=True)
        if unshare
        else None
    )
    if probe is None or probe.returncode != 0:
        pytest.skip("needs unshare with user namespaces to mount a small tmpfs (util-linux)")
    child = subprocess.run(
        [
            unshare,
            "--user",
            "--map-root-user",
            "--mount",
            sys.executable,
            "-c",
            CHILD,
            str(tmp_path / "full"),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )
    assert child.returncode == 0, child.stderr[-2000:]
    result = json.loads(child.stdout.splitlines()[-1])
    assert "recording stopped at t=" in result["stopped"] and "No space left" in result["stopped"]
    assert 4 <= result["played"] < 120  # what was written plays; the rest never reached the disk
    assert result["vtt_stopped"] and "No space left" in result["vtt_stopped"]
    assert result["vtt"].startswith("WEBVTT")
    # The other output, on a disk with room, has every line.
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["start"] for line in lines] == list(range(30))
    assert child.stderr.count("recording stopped at") == 1
