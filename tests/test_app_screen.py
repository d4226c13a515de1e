"""The real app on a real X display (Xvfb): its window class and icon as a desktop sees them, and
screenshots of its states.

The screenshots (idle, streaming with overlays, speaking it (espeak on a PulseAudio null sink started
here, the status bar showing the speech lag) with a question typed and its answer marked in the log and
over the video, recording, an error shown, a hub model's download
from a local hub server) are kept in
runs/screenshots/ (a build artefact) for people to look at; with STREAMVLM_UPDATE_SCREENSHOTS=1 they
also replace the set in docs/images/ that the README shows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_questions import wordless_tokens

from hubhelpers import BIG, CHUNK, REPO, FakeHub, repository_files
from livehelpers import Display, SoundServer, app_env, need

ROOT = Path(__file__).resolve().parents[1]
ARTEFACTS = ROOT / "runs" / "screenshots"
IMAGES = ROOT / "docs" / "images"
SHOTS = (
    "app_idle.png",
    "app_streaming.png",
    "app_speech.png",
    "app_recording.png",
    "app_error.png",
    "app_download.png",
)


def test_screenshots_of_idle_streaming_speaking_recording_an_error_and_a_download(
    tiny_dir, tiny_model, tmp_path
):
    pytest.importorskip("PySide6")
    need(shutil.which("espeak-ng") is not None, "espeak-ng: apt-get install espeak-ng")
    home = tmp_path / "home"  # the default record folder, ~/Videos, is made in a home of this test
    home.mkdir()
    answering = tmp_path / "answering.toml"  # every reply to a question an answer (test_questions_cli)
    answering.write_text(
        "[generation]\nmin_new_tokens = 4\nmax_new_tokens = 10\n"
        f"suppress = {json.dumps(wordless_tokens(tiny_model))}\n"
    )
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    for name in SHOTS:
        (ARTEFACTS / name).unlink(missing_ok=True)
    hub = FakeHub(REPO, repository_files(tiny_dir))
    hub.stall_after[BIG] = CHUNK + CHUNK // 2  # the download is grabbed in the middle of the weights
    hub.pace = 4e6  # bytes a second: a line whose rate and time left read as figures of a real one
    sound = SoundServer(tmp_path).start()  # the speaking window's output: a null sink
    display = Display(1280, 800).start()
    env = {**app_env("xcb"), "HOME": str(home), "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")}
    env.update(sound.env)
    env.pop("HF_HUB_OFFLINE")  # the smoke runs need no hub; the download asks the local one
    try:
        with hub:
            run = subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "tests" / "live" / "app_screenshot.py"),
                    str(ARTEFACTS),
                    str(answering),
                ],
                capture_output=True,
                text=True,
                timeout=240,
                env=env,
                cwd=ROOT,
            )
    finally:
        display.stop()
        sound.stop()
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((ARTEFACTS / "result.json").read_text())
    assert result["title"] == "streamvlm (smoke mode)"
    assert result["idle_state"].startswith("Idle")
    # streaming: the window shows exactly what it painted; above the subtitles that is the source frame
    assert result["streaming_state"].startswith("Streaming") and result["figures_live"]
    assert result["picture"][2] >= 500  # the video is shown at a useful size
    assert result["painted_diff"] < 1.0
    assert result["upper_diff"] < 12
    assert result["subtitle_band_diff"] > 3 * result["upper_diff"] + 10
    assert result["stopped_state"] == "Stopped" and not result["stopped_figures_live"]
    # speaking: on the null sink (the system's default output here), the lag and counters shown
    assert result["speech_outputs"][0] == "System default" and "pulse" in result["speech_outputs"]
    assert result["speech_state"].startswith("Streaming")
    assert re.fullmatch(
        r"speech lag \d+\.\d s \(max \d+\.\d s\), \d+ waiting, \d+ dropped", result["speech_text"]
    )
    # ...and a question typed: in the log as asked, its answer marked there (the overlay's checked by the script)
    assert [line.split("] ", 1)[1] for line in result["question_log"]] == ["Q: Who is winning?"]
    question, marked = result["answers"][0]
    assert question == "Who is winning?" and marked.startswith("A: ") and len(marked) > 3
    assert any(line.endswith("] " + marked) for line in result["answer_log"])
    # recording: into ~/Videos, which did not exist and was made at Start, the file named beforehand
    assert not result["record_folder_before"]
    named = re.search(r"streamvlm-\d{8}-\d{6}\.mp4", result["record_note_before"])
    assert named and "created at Start" in result["record_note_before"]
    assert result["record_note"] == f"Recording to ~/Videos/{named.group(0)}" or re.fullmatch(
        r"Recording to ~/Videos/streamvlm-\d{8}-\d{6}\.mp4", result["record_note"]
    )
    assert any(n.endswith(".mp4") for n in result["recordings"]) and any(
        n.endswith(".srt") for n in result["recordings"]
    )
    # an error: in the window, once
    assert result["error_state"] == "Failed" and "could not be opened" in result["error"]
    # a hub model's first start: downloading, with its panel, then cancelled
    percent = result["download_panel"][3]
    assert result["download_state"] == f"Downloading weights {percent}%" and 0 < percent < 100
    assert result["download_panel"][:2] == [
        True,
        "Downloading org/name (once: later starts read it from the cache)",
    ]
    assert re.fullmatch(r"\d+\.\d MB of \d+\.\d MB, [\d.]+ MB/s, \d+ s left", result["download_panel"][2])
    assert result["download_hint"].startswith("The video shows here once the model is ready.")
    assert result["cancelled_state"].startswith("Download cancelled")
    for name in SHOTS:
        assert (ARTEFACTS / name).stat().st_size > 20_000, name
    if os.environ.get("STREAMVLM_UPDATE_SCREENSHOTS") == "1":
        for name in SHOTS:
            shutil.copyfile(ARTEFACTS / name, IMAGES / name)


def test_a_desktop_sees_the_app_as_streamvlm_with_its_icon(tiny_dir, tmp_path):
    """`python -m app` under X: WM_CLASS is ("streamvlm", "streamvlm"), not '__main__.py', and the
    window carries an icon (what taskbars show)."""
    pytest.importorskip("PySide6")
    need(
        shutil.which("xprop") is not None and shutil.which("xwininfo") is not None,
        "apt-get install x11-utils",
    )
    display = Display(1024, 768).start()
    app = subprocess.Popen(
        [sys.executable, "-m", "app", "--smoke"],
        env=app_env("xcb"),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "app.log").open("w"),
    )
    try:
        props, deadline = "", time.monotonic() + 90
        # Until the main window (titled streamvlm..., with a WM_CLASS: Qt's helper windows have none)
        # is up with its properties set: Qt may create its native window more than once while starting.
        while "WM_CLASS(STRING) =" not in props and time.monotonic() < deadline and app.poll() is None:
            time.sleep(0.2)
            tree = subprocess.run(["xwininfo", "-root", "-tree"], capture_output=True, text=True).stdout
            found = re.search(r'^\s*(0x[0-9a-f]+) "streamvlm[^"]*": \("', tree, re.MULTILINE)
            if found:
                window = found.group(1)
                props = subprocess.run(
                    ["xprop", "-id", window, "WM_CLASS"], capture_output=True, text=True
                ).stdout
        assert props, (tmp_path / "app.log").read_text()[-3000:]
        props += subprocess.run(  # the icon's first numbers only: its size
            ["xprop", "-id", window, "-len", "8", "_NET_WM_ICON"], capture_output=True, text=True
        ).stdout
    finally:
        app.terminate()
        app.wait(timeout=10)
        display.stop()
    assert 'WM_CLASS(STRING) = "streamvlm", "streamvlm"' in props, props
    assert "_NET_WM_ICON(CARDINAL) =" in props, props
