"""The training dataset: published `<stem>_with_seeks.jsonl` files picked by glob, read by seeking.

`open_dataset(data_dir, ["train_s12w24_*", "train_s12w24_*", "train_livecc_*"], model)` is
stage 1 as published (a pattern listed twice counts twice; `repeat={"train_s12w24_*": 2}`
says the same); `["*_fg_*"]` is stage 2. Sample i is always the same window, built on demand
(`dataset[i]` raises `SampleError` for a bad one). `samples()` is the skipping iterator: it tries
each index once, logs every bad sample with its file:line and reason, reports it to `on_skip`,
and never substitutes another sample in its place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from core.conversation import Conversation
from core.spec import ModelSpec
from trainer.data.builder import TEXT_SINK, TEXT_WINDOW, build_sample
from trainer.data.errors import SampleError
from trainer.data.sample import TrainSample
from trainer.data.seeks import DATA_SUFFIX, SeekIndex
from trainer.data.video import FrameBudget

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SkippedSample:
    """A sample the skipping iterator left out, and why."""

    index: int
    source: str
    reason: str


def find_data_files(data_dir: Path, patterns: list[str] | None) -> list[tuple[str, Path]]:
    """(pattern, data file) for each pattern's matches, in pattern order; a pattern listed twice counts twice.

    A pattern is a glob over the files in `data_dir`, matched against `<stem>_with_seeks.jsonl`
    or its stem (`train_livecc_*`, `*_fg_*`, `train_s12w24_with_seeks.jsonl`).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"dataset folder {data_dir} does not exist")
    available = sorted(data_dir.glob("*" + DATA_SUFFIX))
    out = []
    for pattern in patterns if patterns is not None else ["*"]:
        matches = sorted(
            {p for p in data_dir.glob(pattern) if p.name.endswith(DATA_SUFFIX)}
            | {p for p in data_dir.glob(pattern + DATA_SUFFIX)}
        )
        if not matches:
            names = ", ".join(p.name for p in available) or "none"
            raise FileNotFoundError(
                f"no data file in {data_dir} matches '{pattern}' (files ending in {DATA_SUFFIX}: {names})"
            )
        out += [(pattern, p) for p in matches]
    return out


class StreamDataset(Dataset):
    """Windows of the chosen data files, index i -> (file, line) fixed at construction."""

    def __init__(
        self,
        root: Path,
        files: list[SeekIndex],
        model: ModelSpec,
        *,
        budget: FrameBudget | None = None,
        text_sink: int = TEXT_SINK,
        text_window: int = TEXT_WINDOW,
    ) -> None:
        self.root = Path(root)
        self.files = files
        self.model = model
        self.budget = budget or FrameBudget()
        self.text_sink, self.text_window = text_sink, text_window
        self._conversation = Conversation(model)
        self._where = [(f, line) for f in files for line in range(len(f))]  # index -> (file, 0-based line)

    def __len__(self) -> int:
        return len(self._where)

    def source(self, i: int) -> str:
        """ "file:line" of sample i (1-based line)."""
        index, line = self._where[i]
        return index.source(line)

    def __getitem__(self, i: int) -> TrainSample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range ({len(self)} samples)")
        index, line = self._where[i]
        return build_sample(
            index.load(line),
            self.root,
            self.model,
            index.source(line),
            budget=self.budget,
            text_sink=self.text_sink,
            text_window=self.text_window,
            conversation=self._conversation,
        )

    def try_get(self, i: int) -> TrainSample | SkippedSample:
        """Sample i, or what was wrong with it (picklable either way, so DataLoader workers can return it)."""
        try:
            return self[i]
        except SampleError as exc:
            return SkippedSample(i, exc.source, exc.reason)

    def samples(
        self,
        indices: Iterable[int] | None = None,
        on_skip: Callable[[SkippedSample], None] | None = None,
    ) -> Iterator[tuple[int, TrainSample]]:
        """Yield (index, sample) for each index once; bad samples are logged, reported to `on_skip`, skipped."""
        for i in range(len(self)) if indices is None else indices:
            got = self.try_get(i)
            if isinstance(got, SkippedSample):
                log.warning("skipping sample %d (%s): %s", i, got.source, got.reason)
                if on_skip is not None:
                    on_skip(got)
                continue
            yield i, got

    def describe(self) -> str:
        """One line per file: name and samples, for the start-of-run log."""
        counts: dict[Path, int] = {}
        for f in self.files:
            counts[f.data_path] = counts.get(f.data_path, 0) + len(f)
        return "; ".join(f"{p.name}: {n}" for p, n in counts.items()) + f" ({len(self)} samples)"


def open_dataset(
    data_dir: Path,
    patterns: list[str] | None,
    model: ModelSpec,
    *,
    repeat: dict[str, int] | None = None,
    budget: FrameBudget | None = None,
    text_sink: int = TEXT_SINK,
    text_window: int = TEXT_WINDOW,
) -> StreamDataset:
    """The dataset of the files in `data_dir` matching `patterns` (all pairs when None).

    `repeat` maps a pattern (or a file stem) to how many times its files are listed. Seeks files
    are checked here: one that does not match its data file raises `SampleError` naming both.
    """
    found = find_data_files(Path(data_dir), patterns)
    repeat = dict(repeat or {})
    stems = {p.name[: -len(DATA_SUFFIX)] for _, p in found}
    unknown = [k for k in repeat if k not in {pat for pat, _ in found} and k not in stems]
    if unknown:
        raise ValueError(
            f"repeat names {', '.join(unknown)}, which is neither a given pattern nor a data file stem"
        )
    bad = {k: v for k, v in repeat.items() if not (isinstance(v, int) and v >= 0)}
    if bad:
        raise ValueError(f"repeat counts must be whole numbers >= 0 (got {bad})")
    indexes: dict[Path, SeekIndex] = {}
    files = []
    for pattern, path in found:
        if path not in indexes:
            indexes[path] = SeekIndex.open(path)
        stem = path.name[: -len(DATA_SUFFIX)]
        times = repeat.get(pattern, repeat.get(stem, 1))
        files += [indexes[path]] * times
    dataset = StreamDataset(
        Path(data_dir), files, model, budget=budget, text_sink=text_sink, text_window=text_window
    )
    log.info("training data: %s", dataset.describe())
    return dataset
