"""Subtitle writers: each format parses back with the right cues, after every single write."""

from __future__ import annotations

import datetime
import html
import json
from pathlib import Path

import pytest
import srt
import webvtt

from core.errors import StreamVLMError
from core.media import subtitles
from core.media.subtitles import JsonlWriter, MultiWriter, SrtWriter, VttWriter, open_writers
from core.types import Commentary

CUES = [
    Commentary(0.0, 1.0, "Kick-off in the rain."),
    Commentary(1.0, 2.0, "   "),  # nothing to say: not written
    Commentary(
        2.0, 2.9999999, "Red shoots & scores <wow> --> 1-0!"
    ),  # float noise; characters VTT must escape
    Commentary(
        3725.5, 3726.25, "  Second line follows.\n\nLate in the game.  "
    ),  # hours; a blank line inside
]
WRITTEN = [c for c in CUES if c.text.strip()]


def read_srt(path: Path) -> list[tuple[int, float, float, str]]:
    return [
        (s.index, s.start.total_seconds(), s.end.total_seconds(), s.content)
        for s in srt.parse(path.read_text())
    ]


def read_vtt(path: Path) -> list[tuple[str, str, str]]:
    return [(c.start, c.end, html.unescape(c.text)) for c in webvtt.read(str(path)).captions]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_srt_round_trip(tmp_path):
    path = tmp_path / "live.srt"
    with SrtWriter(path) as writer:
        for cue in CUES:
            writer.write(cue)
    assert read_srt(path) == [
        (1, 0.0, 1.0, "Kick-off in the rain."),
        (2, 2.0, 3.0, "Red shoots & scores <wow> --> 1-0!"),
        (3, 3725.5, 3726.25, "Second line follows.\nLate in the game."),
    ]
    assert "01:02:05,500 --> 01:02:06,250" in path.read_text()


def test_vtt_round_trip(tmp_path):
    path = tmp_path / "live.vtt"
    with VttWriter(path) as writer:
        for cue in CUES:
            writer.write(cue)
    text = path.read_text()
    assert text.startswith("WEBVTT\n\n")
    assert "-->" not in text.replace(" --> ", "")  # only the timing arrows; the one in the text is escaped
    assert read_vtt(path) == [
        ("00:00:00.000", "00:00:01.000", "Kick-off in the rain."),
        ("00:00:02.000", "00:00:03.000", "Red shoots & scores <wow> --> 1-0!"),
        ("01:02:05.500", "01:02:06.250", "Second line follows.\nLate in the game."),
    ]


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "live.jsonl"
    with JsonlWriter(path) as writer:
        for cue in CUES + [Commentary(4.0, 5.0, "Él marca: ¡gol! 🎉")]:
            writer.write(cue)
    assert read_jsonl(path) == [
        {"start": c.start, "end": c.end, "text": c.text.strip()}
        for c in WRITTEN + [Commentary(4.0, 5.0, "Él marca: ¡gol! 🎉")]
    ]


@pytest.mark.parametrize(
    "writer_type, read",
    [(SrtWriter, read_srt), (VttWriter, read_vtt), (JsonlWriter, read_jsonl)],
    ids=["srt", "vtt", "jsonl"],
)
def test_file_parses_after_every_write_while_the_writer_is_open(tmp_path, monkeypatch, writer_type, read):
    synced = []
    real_fsync = subtitles.os.fsync
    monkeypatch.setattr(subtitles.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "live.sub"
    writer = writer_type(path)
    assert read(path) == []  # valid before the first cue too
    for n, cue in enumerate(WRITTEN, start=1):
        before = len(synced)
        writer.write(cue)
        assert len(read(path)) == n  # read through another handle: the cue is on disk, not in a buffer
        assert len(synced) > before  # and fsynced, so a crash now keeps it
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write(WRITTEN[0])


def test_blank_text_is_skipped_without_using_an_index(tmp_path):
    path = tmp_path / "live.srt"
    with SrtWriter(path) as writer:
        writer.write(Commentary(0.0, 1.0, ""))
        writer.write(Commentary(1.0, 2.0, " \n\t "))
        writer.write(Commentary(2.0, 3.0, "First words."))
    assert read_srt(path) == [(1, 2.0, 3.0, "First words.")]


def test_open_writers_feeds_every_format_given(tmp_path):
    paths = {"srt": tmp_path / "a.srt", "vtt": tmp_path / "a.vtt", "jsonl": tmp_path / "a.jsonl"}
    with open_writers(**paths) as writers:
        assert isinstance(writers, MultiWriter) and len(writers.writers) == 3
        for cue in CUES:
            writers.write(cue)
    assert [text for *_, text in read_srt(paths["srt"])] == [text for *_, text in read_vtt(paths["vtt"])]
    assert [row["start"] for row in read_jsonl(paths["jsonl"])] == [0.0, 2.0, 3725.5]
    with pytest.raises(ValueError, match="closed"):
        writers.write(WRITTEN[0])


def test_open_writers_with_some_formats_writes_only_those(tmp_path):
    with open_writers(vtt=tmp_path / "only.vtt") as writers:
        writers.write(WRITTEN[0])
    assert [p.name for p in tmp_path.iterdir()] == ["only.vtt"]
    with open_writers() as nothing:
        nothing.write(WRITTEN[0])


@pytest.mark.parametrize("writer_type", [SrtWriter, VttWriter, JsonlWriter])
def test_missing_folder_is_a_clear_error(tmp_path, writer_type):
    path = tmp_path / "not_made_yet" / "live.srt"
    with pytest.raises(StreamVLMError, match="does not exist") as info:
        writer_type(path)
    assert str(path.parent) in str(info.value)


def test_a_folder_as_the_path_is_a_clear_error(tmp_path):
    with pytest.raises(StreamVLMError, match="is a folder"):
        SrtWriter(tmp_path)


def test_open_writers_closes_what_it_opened_when_a_later_path_fails(tmp_path, monkeypatch):
    opened = []
    real_create = subtitles._create
    monkeypatch.setattr(subtitles, "_create", lambda path: opened.append(real_create(path)) or opened[-1])
    with pytest.raises(StreamVLMError):
        open_writers(srt=tmp_path / "ok.srt", vtt=tmp_path / "missing" / "x.vtt")
    assert len(opened) == 1 and opened[0].closed


def test_times_are_rounded_to_whole_milliseconds(tmp_path):
    path = tmp_path / "live.srt"
    with SrtWriter(path) as writer:
        writer.write(Commentary(0.0004, 1.9996, "Rounding."))
    (cue,) = srt.parse(path.read_text())
    assert (cue.start, cue.end) == (datetime.timedelta(0), datetime.timedelta(seconds=2))
