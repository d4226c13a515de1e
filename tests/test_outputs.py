"""Outputs never destroy input: an output that is the source, the config or another output is refused
before anything is opened, whatever spelling names it (symlink, hard link, ./x, file://, case)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

from clihelpers import CLIP, assert_one_error_line, run_main  # noqa: E402
from core.__main__ import main as core_main  # noqa: E402
from core.errors import ConfigError  # noqa: E402


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A folder holding clip.mp4 (a copy of the demo clip) and config.toml, as the working directory."""
    (tmp_path / "clip.mp4").write_bytes(CLIP.read_bytes())
    (tmp_path / "config.toml").write_text("[stream]\nfps = 2\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _symlink(folder: Path) -> str:
    (folder / "link.jsonl").symlink_to(folder / "clip.mp4")
    return "link.jsonl"


def _hardlink(folder: Path) -> str:
    os.link(folder / "clip.mp4", folder / "hard.vtt")
    return "hard.vtt"


def _linked_folder(folder: Path) -> str:
    (folder / "elsewhere").symlink_to(folder, target_is_directory=True)
    return "elsewhere/clip.mp4"


# name -> (make the extra run arguments in `folder`, words the error line must hold)
REFUSED = {
    "--srt is the source": (lambda f: ["--srt", "clip.mp4"], ["--srt", "--source", "destroy"]),
    "--srt is ./source": (lambda f: ["--srt", "./clip.mp4"], ["--srt", "--source"]),
    "--srt is the absolute source": (lambda f: ["--srt", str(f / "clip.mp4")], ["--srt", "--source"]),
    "--srt through a symlinked folder": (lambda f: ["--srt", _linked_folder(f)], ["--srt", "--source"]),
    "--jsonl is a symlink to the source": (lambda f: ["--jsonl", _symlink(f)], ["--jsonl", "--source"]),
    "--vtt is a hard link to the source": (lambda f: ["--vtt", _hardlink(f)], ["--vtt", "--source"]),
    "--record is the source": (lambda f: ["--record", "clip.mp4"], ["--record", "--source"]),
    "--srt is the config": (
        lambda f: ["--config", "config.toml", "--srt", "config.toml"],
        ["--srt", "--config"],
    ),
    "--vtt is --srt": (lambda f: ["--srt", "out.srt", "--vtt", "./out.srt"], ["--vtt", "--srt", "same file"]),
    "--jsonl is --srt in another case": (
        lambda f: ["--srt", "Out.srt", "--jsonl", "out.SRT"],
        ["--jsonl", "--srt", "same file"],
    ),
    "--record's subtitles are --srt": (
        lambda f: ["--record", "rec.mp4", "--srt", "rec.srt"],
        ["subtitles of --record", "--srt"],
    ),
    "--srt is a folder": (lambda f: ["--srt", "."], ["--srt", "is a folder"]),
    "--vtt in a missing folder": (lambda f: ["--vtt", "nowhere/out.vtt"], ["--vtt", "does not exist"]),
}


@pytest.mark.parametrize("case", REFUSED.values(), ids=REFUSED.keys())
def test_an_output_that_would_destroy_an_input_is_refused_before_anything_opens(folder, capsys, case):
    make_args, words = case
    extra = make_args(folder)
    before = {p.name for p in folder.iterdir()}
    clip, config = digest(folder / "clip.mp4"), digest(folder / "config.toml")
    status, lines = run_main(core_main, ["run", "--source", "clip.mp4", "--model", "tiny", *extra], capsys)
    assert_one_error_line(status, lines, *words)
    assert digest(folder / "clip.mp4") == clip and digest(folder / "config.toml") == config
    assert {p.name for p in folder.iterdir()} == before, "nothing may be created"


def test_a_file_url_source_is_protected_too(folder, capsys):
    argv = ["run", "--source", f"file://{folder / 'clip.mp4'}", "--model", "tiny", "--srt", "clip.mp4"]
    status, lines = run_main(core_main, argv, capsys)
    assert_one_error_line(status, lines, "--srt", "--source")


def test_a_camera_device_is_an_input(tmp_path):
    from core.paths import check_outputs, source_file

    device = tmp_path / "video0"  # stands in for /dev/video0
    device.write_bytes(b"")
    assert source_file(f"camera:{device}") == device and source_file(f"camera:{device}@640x480") == device
    with pytest.raises(ConfigError, match="destroy"):
        check_outputs({"--srt": device}, {"--source": source_file(f"camera:{device}")})


@pytest.mark.parametrize("spec", ["rtsp://127.0.0.1/live", "screen:1", "camera:0", "missing.mp4"])
def test_specs_that_name_no_file_protect_nothing(spec):
    from core.paths import source_file

    assert source_file(spec) is None


def test_an_earlier_output_that_is_no_input_is_overwritten_as_before(tmp_path):
    from core.paths import check_outputs

    old = tmp_path / "out.srt"
    old.write_text("1\n00:00:00,000 --> 00:00:01,000\nold\n\n")
    check_outputs({"--srt": old, "--vtt": tmp_path / "out.vtt"}, {"--source": CLIP})  # no error


def test_same_file_rule(tmp_path):
    from core.paths import same_file

    a = tmp_path / "a.srt"
    assert same_file(a, tmp_path / "." / "a.srt")  # neither exists
    assert same_file(a, tmp_path / "A.SRT")  # neither exists: one file on a case-insensitive disk
    assert not same_file(a, tmp_path / "b.srt")
    a.write_text("x")
    assert not same_file(a, tmp_path / "A.srt")  # a exists, A.srt does not: this disk tells them apart
    (tmp_path / "sub").mkdir()
    assert not same_file(tmp_path / "sub" / "a.srt", tmp_path / "a.srt")


# -- the app: its recording and its exports ---------------------------------------------------------


@pytest.fixture
def window(qtbot, tmp_path):
    pytest.importorskip("PySide6")
    from PySide6.QtCore import QSettings

    from app.window import MainWindow

    win = MainWindow(settings=QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(win)
    yield win
    win.close()


def test_the_app_never_exports_over_its_recording_or_source(window, tmp_path):
    from app.state import RunRequest
    from core.types import Commentary

    recording = tmp_path / "rec.mp4"
    (tmp_path / "rec.srt").write_text("the recording's own subtitles\n")
    window.request = RunRequest(
        source=str(CLIP), model="tiny", instruction="", previous_text="", record_to=str(recording)
    )
    window.lines = [Commentary(0.0, 1.0, "a goal")]
    with pytest.raises(ConfigError, match="same file"):
        window.export(tmp_path / "rec.srt")
    assert (tmp_path / "rec.srt").read_text() == "the recording's own subtitles\n"
    (tmp_path / "folder.srt").mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        window.export(tmp_path / "folder.srt")
    assert window.export(tmp_path / "commentary.srt") == 1  # any other name is written


def test_the_app_never_records_over_its_source(qtbot, window, tmp_path, monkeypatch):
    """A recording whose name would be the video being replayed (an earlier recording, started in the
    same second) gets a name of its own; the source is left as it was."""
    source = tmp_path / "streamvlm-replay.mp4"
    source.write_bytes(CLIP.read_bytes())
    before = digest(source)
    monkeypatch.setattr("app.run_state.time.strftime", lambda _: source.stem)
    window.source_box.setCurrentText(str(source))
    window.model_edit.setText("tiny")
    window.record_check.setChecked(True)
    window.output_edit.setText(str(tmp_path))
    window.start()
    assert window.request.record_to == str(tmp_path / "streamvlm-replay-2.mp4"), window.message.text()
    window.stop()
    qtbot.waitUntil(lambda: window.thread is None, timeout=30_000)
    assert digest(source) == before


def test_the_apps_recording_check_refuses_an_output_that_is_its_source(window, tmp_path):
    """The rule under the names: a recording path that is the source is refused at Start."""
    from core.errors import StreamVLMError
    from core.paths import check_outputs, recording_outputs

    source = tmp_path / "match.mp4"
    source.write_bytes(b"video")
    with pytest.raises(StreamVLMError, match="destroy"):
        check_outputs(recording_outputs(source), {"the source": source})
