"""What every benchmark command shares: its flags, the data folder, the model, the judge, resuming.

Each benchmark module adds `add_common_arguments` to its parser and works in stages over keyed
items: `pending` says which of this shard's items are not finished yet, so a benchmark loads its
model only when there is something left to do (a finished run reruns in seconds).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from core.cli_args import COUNT, SECONDS, add_engine_arguments, config_from_args, number
from core.errors import ConfigError, SourceError, StreamVLMError
from evals.judge import ChatClient, ChatSettings
from evals.results import ResultFile, Shard, parse_shard

log = logging.getLogger(__name__)


class DataError(StreamVLMError):
    """A benchmark's annotation file is missing or malformed."""


def read_jsonl(path: Path, what: str) -> list[tuple[int, dict]]:
    """(line number, object) of each non-blank line; a line that is not a JSON object is a DataError."""
    if not path.is_file():
        raise DataError(f"{what} '{path}' does not exist; download the dataset there or fix --data")
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path} line {number} is not valid JSON ({exc.msg}); fix or remove that line"
                ) from None
            if not isinstance(row, dict):
                raise DataError(f"{path} line {number} is not a JSON object")
            rows.append((number, row))
    return rows


def field(row: dict, name: str, kind: type | tuple[type, ...], where: str):
    """row[name], which must exist and be of `kind`, else a DataError naming the place."""
    if name not in row:
        raise DataError(f"{where} lacks the field '{name}'")
    value = row[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where}: '{name}' must be a {names} (got {type(value).__name__})")
    return value


def timed_triples(value: list, where: str) -> list[tuple[float, float, str]]:
    """[[start, end, text], ...] with numeric times, else a DataError."""
    triples = []
    for i, entry in enumerate(value):
        if (
            not isinstance(entry, (list, tuple))
            or len(entry) != 3
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in entry[:2])
        ):
            raise DataError(
                f"{where}: content[{i}] must be [start, end, text] with times in seconds (got {entry!r})"
            )
        triples.append((float(entry[0]), float(entry[1]), str(entry[2])))
    return triples


def add_common_arguments(
    parser: argparse.ArgumentParser, *, judge: bool = True, api_model: bool = False
) -> None:
    parser.add_argument(
        "--model",
        help="checkpoint folder or hub id streamed through our engine (the base model is just another "
        "checkpoint, e.g. Qwen/Qwen2.5-VL-7B-Instruct), or 'tiny'",
    )
    parser.add_argument("--data", type=Path, required=True, help="the benchmark's data folder or file")
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder; rerun with the same one to resume"
    )
    parser.add_argument(
        "--shard", help="i/n: run the i-th of n shares of the items (default: RANK/WORLD_SIZE)"
    )
    parser.add_argument("--limit", type=COUNT, help="use only the first N items (smoke runs)")
    add_engine_arguments(
        parser,
        ("device", "dtype", "attn", "weights", "max_pixels", "temperature", "max_new_tokens"),
        switches=False,
    )
    if judge:
        group = parser.add_argument_group("judge (any OpenAI-compatible endpoint)")
        group.add_argument(
            "--judge-url", help="base URL, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1"
        )
        group.add_argument("--judge-model", help="e.g. gpt-5 or gpt-4o-mini; recorded with every number")
        add_endpoint_options(group, "judge")
    if api_model:
        group = parser.add_argument_group(
            "API baseline (an OpenAI-compatible multimodal model, e.g. gpt-4o-mini)"
        )
        group.add_argument("--baseline-api-url", help="generate the baseline with this endpoint")
        group.add_argument("--baseline-api-model", help="e.g. gpt-4o-mini")
        add_endpoint_options(group, "baseline-api")


def add_endpoint_options(group, prefix: str) -> None:
    group.add_argument(
        f"--{prefix}-key-env", default="OPENAI_API_KEY", help="environment variable holding the key"
    )
    group.add_argument(f"--{prefix}-timeout", type=SECONDS, default=120.0, help="seconds per request")
    group.add_argument(
        f"--{prefix}-retries", type=number(0, 100, integer=True), default=4, help="retries of failed requests"
    )
    group.add_argument(
        f"--{prefix}-backoff", type=number(0, 3600), default=2.0, help="seconds before the first retry"
    )
    group.add_argument(
        f"--{prefix}-workers", type=number(1, 256, integer=True), default=4, help="requests in flight at once"
    )


def endpoint(args: argparse.Namespace, prefix: str, **overrides) -> ChatSettings | None:
    """Settings of the `--judge-*` or `--baseline-api-*` endpoint, or None when not asked for."""
    name = prefix.replace("-", "_")
    url, model = getattr(args, f"{name}_url", None), getattr(args, f"{name}_model", None)
    if not url and not model:
        return None
    if not (url and model):
        raise ConfigError(f"--{prefix}-url and --{prefix}-model go together; give both")
    return ChatSettings(
        url=url,
        model=model,
        key_env=getattr(args, f"{name}_key_env"),
        timeout=getattr(args, f"{name}_timeout"),
        retries=getattr(args, f"{name}_retries"),
        backoff=getattr(args, f"{name}_backoff"),
        **overrides,
    )


def chat_client(settings: ChatSettings, out: Path, name: str) -> ChatClient:
    """A client whose answers are cached in the run folder (`<name>_cache.jsonl`)."""
    return ChatClient(settings, cache_path=out / f"{name}_cache.jsonl")


def shard_of(args: argparse.Namespace) -> Shard:
    return parse_shard(args.shard)


def pending(store: ResultFile, keys: list[str]) -> list[str]:
    """This shard's keys not yet finished (by any shard's file)."""
    done = store.load()
    mine = store.shard.select(keys)
    todo = [k for k in mine if k not in done]
    log.info(
        "%s: %d of this shard's %d items to do (%d finished)",
        store.stage,
        len(todo),
        len(mine),
        len(mine) - len(todo),
    )
    return todo


def require_model(args: argparse.Namespace) -> str:
    if not args.model:
        raise ConfigError("--model is required to generate; pass a checkpoint folder, a hub id or 'tiny'")
    return args.model


def load_engine(args: argparse.Namespace):
    """The streaming engine over `--model`, with the config file and flags applied."""
    from core.loading import open_engine

    require_model(args)
    return open_engine(engine_config(args))


def engine_config(args: argparse.Namespace):
    """The engine config of a benchmark run (core's one route: the file, then the flags); a
    `--max-pixels` below the default minimum lowers the minimum too, so small smoke frames work."""
    from dataclasses import replace

    config = config_from_args(argparse.Namespace(**{**vars(args), "max_pixels": None}))
    cap = getattr(args, "max_pixels", None)
    if cap:
        stream = replace(config.stream, min_pixels=min(config.stream.min_pixels, cap), max_pixels=cap)
        config = replace(config, stream=stream)
    return config


def engine_settings(args: argparse.Namespace) -> dict:
    """The engine config a run used, for its results file."""
    from dataclasses import asdict

    return asdict(engine_config(args))


def data_folder(path: Path, what: str) -> Path:
    if not path.exists():
        raise SourceError(f"data folder '{path}' does not exist; download {what} there or fix --data")
    return path


def resolve_video(
    root: Path, name: str, folders: tuple[str, ...] = ("", "videos", "video", "src_videos")
) -> Path:
    """A dataset's video path: absolute, or relative to the data folder or one of its usual subfolders."""
    candidate = Path(name)
    if candidate.is_absolute():
        return candidate
    for folder in folders:
        path = root / folder / name
        if path.exists():
            return path
    return root / name  # reported as missing when opened
