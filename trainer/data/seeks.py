"""Random access to a JSONL data file through its seeks file (a JSON array of each line's byte offset).

The published datasets ship `<stem>_with_seeks.jsonl` (one JSON sample per line) with
`<stem>_seeks.jsonl`; a sample is read by seeking to its offset and reading one line, so a
multi-gigabyte data file is never read whole. Checks are O(1): at open, the offsets must rise,
start at 0 and the last one must start the file's last line (a seeks file with the wrong count
fails here); at each read, the offset must start a line and its line must end where the next
offset begins (offsets shifted mid-file fail on the line they name).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from trainer.data.errors import SampleError

DATA_SUFFIX = "_with_seeks.jsonl"
SEEKS_SUFFIX = "_seeks.jsonl"


def seeks_path(data_path: Path) -> Path:
    """`<stem>_seeks.jsonl` next to `<stem>_with_seeks.jsonl`."""
    if not data_path.name.endswith(DATA_SUFFIX):
        raise ValueError(f"a data file's name must end in {DATA_SUFFIX} (got {data_path.name})")
    return data_path.with_name(data_path.name[: -len(DATA_SUFFIX)] + SEEKS_SUFFIX)


@dataclass
class SeekIndex:
    """One data file and the byte offset of each of its lines."""

    data_path: Path
    offsets: list[int]
    size: int = field(repr=False, default=0)

    @classmethod
    def open(cls, data_path: Path) -> SeekIndex:
        """Load and check the seeks file of `data_path`; raise SampleError naming the file on a mismatch."""
        data_path = Path(data_path)
        index_path = seeks_path(data_path)
        if not data_path.is_file():
            raise SampleError(str(data_path), "data file not found")
        if not index_path.is_file():
            raise SampleError(str(index_path), f"seeks file for {data_path.name} not found")
        try:
            offsets = json.loads(index_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SampleError(f"{index_path}:1", f"not a JSON array of offsets ({exc})") from None
        if not isinstance(offsets, list) or not all(type(o) is int for o in offsets):
            raise SampleError(f"{index_path}:1", "must hold one JSON array of integer byte offsets")
        index = cls(data_path, offsets, os.path.getsize(data_path))
        index._check(index_path)
        return index

    def _check(self, index_path: Path) -> None:
        offsets, name = self.offsets, self.data_path.name
        if not offsets:
            if self.size:
                raise SampleError(str(index_path), f"lists no lines but {name} is not empty")
            return
        if offsets[0] != 0:
            raise SampleError(
                f"{self.data_path}:1", f"{index_path.name} says line 1 starts at byte {offsets[0]}"
            )
        for i in range(1, len(offsets)):
            if offsets[i] <= offsets[i - 1]:
                raise SampleError(
                    f"{self.data_path}:{i + 1}",
                    f"{index_path.name} offsets must rise (entry {i + 1} is {offsets[i]} after {offsets[i - 1]})",
                )
        last = len(offsets)
        if offsets[-1] >= self.size:
            raise SampleError(
                f"{self.data_path}:{last}",
                f"{index_path.name} lists {last} lines but offset {offsets[-1]} is past the end "
                f"({self.size} bytes); the seeks file does not belong to this data file",
            )
        with open(self.data_path, "rb") as f:
            f.seek(offsets[-1] - 1 if offsets[-1] else 0)
            if offsets[-1] and f.read(1) != b"\n":
                raise SampleError(
                    f"{self.data_path}:{last}",
                    f"{index_path.name} offset {offsets[-1]} does not start a line; regenerate the seeks file",
                )
            f.readline()
            if f.tell() < self.size and f.read().strip():
                raise SampleError(
                    f"{self.data_path}:{last}",
                    f"{index_path.name} lists {last} lines but {name} has more after line {last}; "
                    "regenerate the seeks file",
                )

    def __len__(self) -> int:
        return len(self.offsets)

    def source(self, i: int) -> str:
        return f"{self.data_path}:{i + 1}"

    def read(self, i: int) -> bytes:
        """The bytes of line i (0-based), newline stripped, read by seeking; raise SampleError if misplaced."""
        start = self.offsets[i]
        end = self.offsets[i + 1] if i + 1 < len(self.offsets) else None
        with open(self.data_path, "rb") as f:
            if start:
                f.seek(start - 1)
                if f.read(1) != b"\n":
                    raise SampleError(
                        self.source(i),
                        f"seeks offset {start} does not start a line; regenerate the seeks file",
                    )
            else:
                f.seek(0)
            line = f.readline()
        if end is not None and start + len(line) != end:
            raise SampleError(
                self.source(i),
                f"the line at offset {start} ends at byte {start + len(line)} but the next offset is {end}; "
                "regenerate the seeks file",
            )
        return line.rstrip(b"\r\n")

    def load(self, i: int) -> object:
        """Line i parsed as JSON."""
        raw = self.read(i)
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SampleError(self.source(i), f"the line is not JSON ({exc})") from None


def write_seeks(data_path: Path) -> list[int]:
    """Write `<stem>_seeks.jsonl` for a data file (the offset of each line); return the offsets."""
    offsets, position = [], 0
    with open(data_path, "rb") as f:
        for line in f:
            offsets.append(position)
            position += len(line)
    seeks_path(Path(data_path)).write_text(json.dumps(offsets))
    return offsets
