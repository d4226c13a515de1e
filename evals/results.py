"""A run's output folder: per-item results as JSON lines, shards, and what every results file records.

Each stage of a benchmark (generation, judging, answering) appends one JSON line per finished
item to `<stage>.<i>of<n>.jsonl`, flushed and fsynced at once, so a run killed at any point keeps
every item it finished; a rerun reads the union of all shards' files and skips those keys before
it loads a model. A line cut short by a kill is the only kind of damage possible; it is dropped
with a warning and its item is redone.

`Shard` picks this process's share of the items (`--shard i/n`, else torchrun's RANK and
WORLD_SIZE). `run_meta` is what every results file records: git revision, config, package
versions, judge, and under `provenance` how its numbers were made (`provenance`, the one place that
builds that record; `python -m evals report` compares runs by it).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.provenance import git_revision, package_version

log = logging.getLogger(__name__)

VERSIONED_PACKAGES = ("streamvlm", "torch", "transformers", "openai", "av", "numpy", "nvidia-vlmeval")


@dataclass(frozen=True)
class Shard:
    """This process's share of the items: every `count`-th item starting at `index`."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(f"shard {self.index}/{self.count} is invalid; use i/n with 0 <= i < n")

    @property
    def tag(self) -> str:
        return f"{self.index}of{self.count}"

    def select(self, keys: Sequence[str]) -> list[str]:
        """The keys this shard owns, in dataset order (round robin, so long and short items mix)."""
        return list(keys[self.index :: self.count])


def parse_shard(text: str | None) -> Shard:
    """`--shard i/n` if given, else torchrun's RANK/WORLD_SIZE, else the whole dataset."""
    if text:
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ConfigError(f"--shard must look like i/n, e.g. 0/4 (got {text!r})") from None
        return Shard(index, count)
    if "WORLD_SIZE" in os.environ:
        try:
            return Shard(int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"]))
        except ValueError:
            raise ConfigError("RANK and WORLD_SIZE must be integers") from None
    return Shard()


class ResultFile:
    """One stage's finished items: reads every shard's file, appends to this shard's own."""

    def __init__(self, out: Path, stage: str, shard: Shard) -> None:
        self.out, self.stage, self.shard = out, stage, shard
        self.path = out / f"{stage}.{shard.tag}.jsonl"

    def load(self) -> dict[str, dict]:
        """Finished records of all shards by key (a later line for a key replaces an earlier one)."""
        records: dict[str, dict] = {}
        for path in sorted(self.out.glob(f"{self.stage}.*.jsonl")):
            records.update(read_records(path))
        return records

    def append(self, record: dict) -> None:
        """Write one finished item now, durably: a crash after this call cannot lose it."""
        if "key" not in record:
            raise ValueError("a result record needs a 'key'")
        append_record(self.path, record)


def append_record(path: Path, record: dict) -> None:
    """Append one JSON line, flushed and fsynced; a line torn by an earlier kill is ended first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False) + "\n"
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write(line.encode())
        f.flush()
        os.fsync(f.fileno())


def read_records(path: Path) -> dict[str, dict]:
    """Records of one JSON-lines file by key; a torn line (a killed writer) is skipped with a warning."""
    records: dict[str, dict] = {}
    with open(path, encoding="utf-8", errors="replace") as f:  # bytes not UTF-8: U+FFFD, not a traceback
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                records[record["key"]] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                log.warning(
                    "%s line %d is incomplete (a run cut short?); that item will be redone", path, number
                )
    return records


# The fields of a provenance record that must agree before two runs' numbers share a table
# (`python -m evals report`); the others (model, git, versions) are shown, and differ freely.
COMPARED_FIELDS = ("task", "benchmark", "sampling", "frames", "pixels", "cache", "judge", "baseline", "seed")
NOT_APPLICABLE = "n/a"


def provenance(
    task: str,
    *,
    benchmark: str | None = None,
    model: str | None = None,
    sampling: str,
    frames: dict | str,
    pixels: dict | str,
    cache: dict | str,
    judge: dict | None = None,
    baseline: dict | None = None,
    seed: int | None = None,
) -> dict:
    """How a run's numbers were made: the one record every results file carries (`meta.provenance`).

    `sampling` is "streaming" (the engine's chunked stream with its cache policy) or "offline" (the
    whole clip in one forward); `frames` the sampling rate or count; `pixels` the pixel budget;
    `judge` the judge's model and endpoint; `baseline` what the numbers are compared against and where
    its outputs came from; `seed` the generation seed (None: not seeded, or greedy with no sampling).
    """
    if sampling not in ("streaming", "offline"):
        raise ValueError(f"sampling must be 'streaming' or 'offline' (got {sampling!r})")
    return jsonable({
        "task": task,
        "benchmark": benchmark or task,
        "model": model,
        "sampling": sampling,
        "frames": frames,
        "pixels": pixels,
        "cache": cache,
        "judge": {"model": judge.get("model"), "url": judge.get("url")} if judge else None,
        "baseline": baseline,
        "seed": seed,
        "git": git_revision(),
        "versions": versions(),
    })  # fmt: skip


def streaming_provenance(task: str, config: dict[str, Any], judge: dict | None) -> dict:
    """The record of a commentary benchmark streamed through the engine (its config under "engine")."""
    engine = config["engine"]
    stream = engine["stream"]
    if config.get("baseline_run"):
        baseline = {"kind": "run", "source": str(config["baseline_run"])}
    elif config.get("baseline_api_model"):
        baseline = {
            "kind": "api",
            "model": config["baseline_api_model"],
            "url": config.get("baseline_api_url"),
        }
    else:
        baseline = None
    seed = config.get("seed", engine["generation"].get("seed"))
    return provenance(
        task,
        model=config.get("model"),
        sampling="streaming",
        frames={"fps": stream["fps"], "chunk_seconds": stream["chunk_seconds"]},
        pixels={"min_pixels": stream["min_pixels"], "max_pixels": stream["max_pixels"]},
        cache=engine["cache"],
        judge=judge,
        baseline=baseline,
        seed=seed,
    )


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), **{p: package_version(p) for p in VERSIONED_PACKAGES}}


def run_meta(task: str, config: dict[str, Any], judge: dict | None = None, how: dict | None = None) -> dict:
    """What every results file records besides its numbers; `how` is the run's `provenance` record
    (built from the engine config when the run streamed through the engine and passes none)."""
    if how is None and isinstance(config.get("engine"), dict):
        how = streaming_provenance(task, config, judge)
    return {
        "task": task,
        "git": git_revision(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": jsonable(config),
        "judge": judge,
        "versions": versions(),
        "provenance": how,
    }


def write_json(path: Path, data: Any) -> None:
    """Write whole, then rename: a reader never sees half a file (nor a half written by another shard's
    process: each writes its own temporary file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(jsonable(data), indent=1, ensure_ascii=False))
    tmp.replace(path)


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def missing(keys: Iterable[str], done: dict[str, dict]) -> list[str]:
    return [k for k in keys if k not in done]
