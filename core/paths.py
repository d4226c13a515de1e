"""Where files go: output paths that never destroy input (one check, run before anything is opened or
created), and streamvlm's own cache folder (`cache_root`).

`check_outputs` refuses an output that is the same file as an input (the source video, a config
file) or as another output, an output that is a folder, and an output whose folder does not exist.
Two paths are the same file when `os.path.samefile` says so (symlinks, hard links, `./x` and `x`,
case on a case-insensitive disk); when one of them does not exist yet, when their resolved paths are
equal, or when they are names in one folder that differ only in case (on a case-insensitive disk they
are one file, and a case-sensitive one cannot be told apart without creating it). An existing output
that is no input is overwritten, as a rerun expects. Only the standard library is imported here.

Files and folders the user names are read and made here too: `read_text_file` (a config, a token, a
list: a folder, a device, a pipe or bytes that are not UTF-8 are refused in one sentence) and
`make_output_folder` (an output folder created, or refused when it is a file or cannot be created).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from core.errors import ConfigError, StreamVLMError

PathLike = str | os.PathLike
TEXT_FILE_LIMIT = 64 * 2**20  # a config or a list the user wrote; anything larger is the wrong file


def cache_root() -> Path:
    """streamvlm's own cache folder: `$STREAMVLM_CACHE`, else `~/.cache/streamvlm` (the tiny model, the
    compile caches)."""
    return Path(os.environ.get("STREAMVLM_CACHE", Path.home() / ".cache" / "streamvlm"))


def source_file(spec: str) -> Path | None:
    """The existing file a source spec reads (a video path or file:// URL, or camera:/dev/videoN), or
    None when it names none (a stream URL, a screen, a camera index, a file that does not exist)."""
    text = spec.strip()
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif text.startswith("camera:"):
        text = re.sub(r"@\d+x\d+$", "", text[len("camera:") :])
    return Path(text) if text and os.path.exists(text) else None


def recording_outputs(path: PathLike, label: str = "the recording") -> dict[str, Path]:
    """The files a recording to `path` writes: the MP4 and its SRT sidecar (core/media/recorder.py)."""
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise ConfigError(f"recordings are MP4 files; give a path ending in .mp4 for {label} (got '{path}')")
    return {label: path, f"the subtitles of {label}": path.with_suffix(".srt")}


def output_problem(path: PathLike) -> str | None:
    """Why no file can be written at `path` (a phrase), or None."""
    path = Path(path)
    if path.is_dir():
        return "it is a folder; give a file name inside it"
    if not path.parent.is_dir():
        return f"the folder '{path.parent}' does not exist; create it or choose another path"
    return None


def folder_problem(folder: PathLike) -> str | None:
    """Why new files cannot be written into `folder` (a phrase), or None."""
    if not (Path(folder).is_dir() and os.access(folder, os.W_OK)):
        return f"the folder '{folder}' does not exist or is not writable; create it or choose another"
    return None


def check_output(path: PathLike, what: str) -> None:
    """StreamVLMError 'cannot write {what} to ...' if no file can be written at `path`."""
    problem = output_problem(path)
    if problem:
        raise StreamVLMError(f"cannot write {what} to '{path}': {problem}")


def check_outputs(outputs: Mapping[str, PathLike | None], inputs: Mapping[str, PathLike | None]) -> None:
    """Refuse (ConfigError) outputs that would destroy an input or each other. Keys are labels for the
    message (a flag such as '--srt'); None values are skipped. Nothing is opened or created."""
    given_inputs = [(label, Path(p)) for label, p in inputs.items() if p is not None]
    seen: list[tuple[str, Path]] = []
    for label, path in ((label, Path(p)) for label, p in outputs.items() if p is not None):
        problem = output_problem(path)
        if problem:
            raise ConfigError(f"cannot write {label} to '{path}': {problem}")
        for other_label, other in given_inputs:
            if same_file(path, other):
                raise ConfigError(
                    f"{label} '{path}' is the input {other_label} '{other}'; writing it would destroy "
                    "the input, choose another path"
                )
        for other_label, other in seen:
            if same_file(path, other):
                raise ConfigError(
                    f"{label} '{path}' and {other_label} '{other}' are the same file; give each output its own path"
                )
        seen.append((label, path))


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether writing `a` would write `b` (see the module docstring for the rule)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        pass  # one of them does not exist (yet)
    real_a, real_b = Path(os.path.realpath(a)), Path(os.path.realpath(b))
    if real_a == real_b:
        return True
    if real_a.exists() or real_b.exists():
        return False  # one exists and the other does not: on any disk they differ
    if real_a.name.casefold() != real_b.name.casefold():
        return False
    try:
        return os.path.samefile(real_a.parent, real_b.parent)
    except OSError:
        return real_a.parent == real_b.parent


def read_text_file(path: PathLike, what: str) -> str:
    """The text of `what` (a phrase: "config file", "the token file") at `path`; ConfigError when it is
    missing, a folder, not a regular file (a device or a pipe, which could block or never end), too large,
    unreadable or not UTF-8 text."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} '{path}' is a folder; give a file")
    if not path.exists():
        raise ConfigError(f"{what} '{path}' not found; give an existing file")
    if not path.is_file():
        raise ConfigError(f"{what} '{path}' is not a regular file (a device or a pipe); give a file")
    try:
        if path.stat().st_size > TEXT_FILE_LIMIT:
            raise ConfigError(
                f"{what} '{path}' is {path.stat().st_size / 2**20:.0f} MiB, too large for a text file "
                "a person wrote; check the path"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} '{path}' ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")  # a byte-order mark, as some editors save, is not content
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{what} '{path}' is not UTF-8 text (byte {exc.start} cannot be read); check the path, or save "
            "it as UTF-8"
        ) from None


def make_output_folder(folder: PathLike, what: str) -> Path:
    """Create `what` (a phrase: "the output folder") at `folder` with its parents, as needed; ConfigError
    when it is a file or cannot be created or written to. Returns it as a Path."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{what} '{folder}' is a file; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create {what} '{folder}' ({exc.strerror or exc}); choose a folder you can write to"
        ) from None
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"{what} '{folder}' is not writable; choose a folder you can write to")
    return folder
