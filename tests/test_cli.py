"""`python -m core run` end to end: the real CLI in a subprocess, the committed clip, the tiny model."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest
import srt
import webvtt

from clihelpers import CLIP, run_cli
from core.synthetic import synthetic_frames, write_video


def vtt_seconds(stamp: str) -> float:
    h, m, s = stamp.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def test_run_writes_srt_vtt_and_jsonl_whose_cues_match_the_chunks(tiny_dir, tmp_path):
    out = {ext: tmp_path / f"out.{ext}" for ext in ("srt", "vtt", "jsonl")}
    result = run_cli(
        "run",
        "--source",
        str(CLIP),
        "--model",
        str(tiny_dir),
        "--seed",
        "3",
        "--min-new-tokens",
        "3",
        "--srt",
        str(out["srt"]),
        "--vtt",
        str(out["vtt"]),
        "--jsonl",
        str(out["jsonl"]),
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in out["jsonl"].read_text().splitlines()]
    subs = list(srt.parse(out["srt"].read_text()))
    cues = list(webvtt.read(str(out["vtt"])))
    # The clip is 8 s long: 8 one-second chunks; every reply of 3+ sampled tokens has some text.
    assert 6 <= len(lines) <= 8
    assert len(subs) == len(cues) == len(lines)
    starts = [line["start"] for line in lines]
    assert starts == sorted(set(starts)) and all(s in range(8) for s in starts)
    for line, sub, cue in zip(lines, subs, cues):
        assert line["end"] == line["start"] + 1.0
        assert sub.start.total_seconds() == line["start"] and sub.end.total_seconds() == line["end"]
        assert vtt_seconds(cue.start) == line["start"] and vtt_seconds(cue.end) == line["end"]
        # WebVTT escapes & and < (webvtt-py returns the cue text as written in the file)
        assert sub.content.strip() == line["text"].strip() == html.unescape(cue.text.strip())
    # Each line is printed with its time as it is produced.
    printed = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert len(printed) == len(lines) and printed[0].startswith(f"[00:00:{starts[0]:04.1f} - ")


def test_a_resolution_change_mid_stream_is_handled(tiny_dir, tmp_path):
    first = write_video(tmp_path / "a.ts", synthetic_frames(96, 64, 10, 2.0), 10)
    second = write_video(tmp_path / "b.ts", synthetic_frames(64, 96, 10, 2.0, seed=1), 10)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    result = run_cli(
        "run",
        "--source",
        str(joined),
        "--model",
        str(tiny_dir),
        "--jsonl",
        str(tmp_path / "o.jsonl"),
        "--min-new-tokens",
        "3",
        "--seed",
        "1",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    ends = [json.loads(line)["end"] for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert ends and max(ends) > 2.0  # commentary continued past the change at 2 s


def _text_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("this is not a video\n" * 50)
    return path


def _truncated_mp4(tmp_path: Path) -> Path:
    path = tmp_path / "cut.mp4"
    data = CLIP.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the index (moov) sits at the end: cut away
    return path


BAD_INPUTS = {
    "missing file": (
        lambda tmp, model: ["--source", str(tmp / "nope.mp4"), "--model", model],
        "does not exist",
    ),
    "not a video": (lambda tmp, model: ["--source", str(_text_file(tmp)), "--model", model], "not a video"),
    "truncated video": (
        lambda tmp, model: ["--source", str(_truncated_mp4(tmp)), "--model", model],
        "truncated",
    ),
    "unknown model id": (
        lambda tmp, model: ["--source", str(CLIP), "--model", "no-such-org/no-such-model"],
        "no-such-org/no-such-model",
    ),
    "missing model folder": (
        lambda tmp, model: ["--source", str(CLIP), "--model", str(tmp / "model")],
        "does not exist",
    ),
    "unreachable stream": (
        lambda tmp, model: ["--source", "rtsp://127.0.0.1:9/live", "--model", model],
        "could not be opened",
    ),
    "wrong camera index": (
        lambda tmp, model: ["--source", "camera:17", "--model", model],
        "camera 17 could not be opened",
    ),
    "unsupported scheme": (
        lambda tmp, model: ["--source", "ftp://example.com/match.mp4", "--model", model],
        "'ftp://' sources are not supported",
    ),
    "bad config value": (
        lambda tmp, model: ["--source", str(CLIP), "--model", model, "--top-p", "2"],
        "--top-p: must be a number > 0 and <= 1",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_gives_one_clear_line_not_a_traceback(tiny_dir, tmp_path, case):
    make_args, words = case
    result = run_cli("run", *make_args(tmp_path, str(tiny_dir)), "--device", "cpu")
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and words in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_build_tiny_writes_a_loadable_model(tmp_path):
    result = run_cli("build-tiny", str(tmp_path / "m"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "m" / "tokenizer.json").is_file()


def test_starting_says_nothing_about_libraries_the_user_did_not_ask_about():
    """With the fp8 extra installed, transformers imports torchao, whose import made torch log two
    `register_constant() ... deprecated` warnings on every start of every command. A fresh process that
    imports what every command imports prints nothing on stderr."""
    import subprocess
    import sys

    code = "import core, core.loading; from transformers import Qwen2_5_VLForConditionalGeneration"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr
