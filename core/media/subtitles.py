"""Live subtitle files: commentary written cue by cue as it is generated, safe against crashes.

Each writer appends one cue per `write`, then flushes and fsyncs, so the file on disk is a
complete, parseable SRT / WebVTT / JSON-lines file after every cue and a crash (or a killed
process) loses nothing already written. `open_writers` bundles the formats a run asked for.
Answers to questions are marked: SRT and WebVTT cues prefixed with `core.types.ANSWER_PREFIX`, JSON
lines with the question beside the answer's text.
"""

from __future__ import annotations

import abc
import datetime
import html
import json
import logging
import os
import stat
from pathlib import Path
from typing import TextIO

from srt import Subtitle

from core.errors import StreamVLMError
from core.paths import check_output
from core.types import Closeable, Commentary

log = logging.getLogger(__name__)


class SubtitleWriter(Closeable, abc.ABC):
    """One subtitle file, created (or emptied) on open, growing by one flushed cue per `write`."""

    header = ""  # written once on open, so even a file with no cues is valid

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = _create(self.path)
        # A pipe, a terminal or /dev/null (`--srt /dev/stdout | ...`) cannot be synced (EINVAL): only a
        # file on a disk is.
        self._durable = stat.S_ISREG(os.fstat(self._file.fileno()).st_mode)
        self.stopped: str | None = None  # why cues stopped being written (a full disk), if they did
        self._cues = 0
        self._append(self.header)

    def write(self, commentary: Commentary) -> None:
        """Append one cue and make it durable; text that is empty or only whitespace is skipped."""
        text = commentary.text.strip()
        if not text:
            return
        if self._file.closed:
            raise ValueError(
                f"the subtitle writer for '{self.path}' is closed; open a new one to write more cues"
            )
        self._cues += 1
        self._append(self._cue(self._cues, commentary, text))

    @abc.abstractmethod
    def _cue(self, index: int, line: Commentary, text: str) -> str:
        """The cue of `line` (its `text` stripped), including the separator that ends it."""

    def _append(self, text: str) -> None:
        if not text or self.stopped:
            return
        try:
            self._file.write(text)
            self._file.flush()
            if self._durable:
                os.fsync(self._file.fileno())  # flush() only reaches the OS; fsync reaches the disk
        except OSError as exc:
            # A full disk stops this file, not the run: the cues before stay whole (each was synced), and
            # the other writers and the commentary go on.
            self.stopped = f"subtitles stopped: cannot write '{self.path}' ({exc.strerror or exc})"
            log.error("%s; the cues written so far are complete, the other outputs go on", self.stopped)

    def close(self) -> None:
        try:
            self._file.close()  # flushes whatever a failed write left in its buffer: fails again
        except OSError:
            if not self.stopped:
                raise


class SrtWriter(SubtitleWriter):
    """SubRip: numbered cues with HH:MM:SS,mmm times."""

    def _cue(self, index: int, line: Commentary, text: str) -> str:
        text = _marked(line, text)
        # strict=True drops blank lines inside the text, which would end the cue early.
        return Subtitle(index, _timedelta(line.start), _timedelta(line.end), text).to_srt(strict=True)


class VttWriter(SubtitleWriter):
    """WebVTT: a WEBVTT header, then cues with HH:MM:SS.mmm times."""

    header = "WEBVTT\n\n"

    def _cue(self, index: int, line: Commentary, text: str) -> str:
        text = _marked(line, text)
        # WebVTT cue text is HTML-like: & and < must be escaped, and escaping > also defuses "-->".
        rows = [html.escape(row.strip(), quote=False) for row in text.splitlines() if row.strip()]
        return f"{_vtt_time(line.start)} --> {_vtt_time(line.end)}\n" + "\n".join(rows) + "\n\n"


class JsonlWriter(SubtitleWriter):
    """JSON lines: one {"start", "end", "text"} object per line, for programs rather than players; an
    answer's object also holds its "question" (its "text" is the answer, unprefixed)."""

    def _cue(self, index: int, line: Commentary, text: str) -> str:
        cue = {"start": line.start, "end": line.end, "text": text}
        if line.is_answer:
            cue["question"] = line.question
        return json.dumps(cue, ensure_ascii=False) + "\n"


class MultiWriter(Closeable):
    """Several subtitle writers fed the same commentary; closing closes them all."""

    def __init__(self, writers: list[SubtitleWriter]) -> None:
        self.writers = writers

    def write(self, commentary: Commentary) -> None:
        for writer in self.writers:
            writer.write(commentary)

    def close(self) -> None:
        errors = []
        for writer in self.writers:  # one failing close must not leave the others open
            try:
                writer.close()
            except OSError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def open_writers(
    srt: str | Path | None = None, vtt: str | Path | None = None, jsonl: str | Path | None = None
) -> MultiWriter:
    """Open a writer for each path given (none given is a writer that writes nothing)."""
    writers: list[SubtitleWriter] = []
    try:
        for path, kind in ((srt, SrtWriter), (vtt, VttWriter), (jsonl, JsonlWriter)):
            if path is not None:
                writers.append(kind(path))
    except BaseException:
        MultiWriter(writers).close()
        raise
    return MultiWriter(writers)


def _create(path: Path) -> TextIO:
    check_output(path, "subtitles")
    folder = path.parent
    try:
        file = open(path, "w", encoding="utf-8", newline="\n")  # the writer owns it until close()
    except OSError as exc:
        raise StreamVLMError(
            f"cannot write subtitles to '{path}' ({exc.strerror}); check the path and its permissions"
        ) from None
    _fsync_folder(folder)  # a new file's name lives in its folder; without this a power cut can lose it
    return file


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # Windows cannot open a folder; its file system journals names itself
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (network shares) refuse fsync on a folder; the cues still are synced
    finally:
        os.close(fd)


def _marked(line: Commentary, text: str) -> str:
    """`text` (the line's, stripped) marked as an answer where the line is one (`Commentary.marked`)."""
    return Commentary(line.start, line.end, text, line.question).marked


def _timedelta(seconds: float) -> datetime.timedelta:
    # Rounding to whole milliseconds first stops 1.9999999 from printing as 00:00:01,999.
    return datetime.timedelta(milliseconds=max(0, round(seconds * 1000)))


def _vtt_time(seconds: float) -> str:
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{ms:03d}"
