"""What every benchmark command shares: its flags, the data folder, the model, the judge, resuming.

Each benchmark module adds `add_common_arguments` to its parser and works in stages over keyed
items: `pending` says which of this shard's items are not finished yet, so a benchmark loads its
model only when there is something left to do (a finished run reruns in seconds).

`output_folder` is the one rule for a run's folder (`--out`), which every benchmark that writes
results holds while it runs: one folder is one benchmark made with one set of the settings that
change its answers (`run.json` records them). A folder holding another benchmark's results, or
results made with other settings, is refused before anything is written, naming what differs; a
second run of the same shard writing into the folder at the same time is refused too (a lock).
`earlier_run` checks a finished run a benchmark compares against (`--compare`, `--baseline-run`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.cli_args import COUNT, SECONDS, add_engine_arguments, config_from_args, number, path_arg
from core.errors import ConfigError, SourceError, StreamVLMError
from core.paths import make_output_folder, read_text_file
from evals.judge import ChatClient, ChatSettings
from evals.results import ResultFile, Shard, jsonable, parse_shard, write_json

log = logging.getLogger(__name__)


class DataError(StreamVLMError):
    """A benchmark's annotation file is missing or malformed."""


def read_jsonl(path: Path, what: str) -> list[tuple[int, dict]]:
    """(line number, object) of each non-blank line; a line that is not a JSON object is a DataError."""
    if not path.exists():
        raise DataError(f"{what} '{path}' does not exist; download the dataset there or fix --data")
    rows = []
    for line_no, line in enumerate(read_text_file(path, what).split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path} line {line_no} is not valid JSON ({exc.msg}); fix or remove that line"
            ) from None
        if not isinstance(row, dict):
            raise DataError(f"{path} line {line_no} is not a JSON object")
        rows.append((line_no, row))
    return rows


def read_json(path: Path, what: str):
    """The JSON value of a dataset file (missing, unreadable or not UTF-8: one sentence)."""
    if not path.exists():
        raise DataError(f"{what} '{path}' does not exist; download the dataset there or fix --data")
    try:
        return json.loads(read_text_file(path, what))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None


def selected(items: list, what: str, where: str, choices: str = "") -> list:
    """`items` when there is at least one, else a DataError naming what was empty (`what`, e.g.
    "OVO-Bench questions"), where from, and (`choices`) what could be chosen instead."""
    if not items:
        raise DataError(f"no {what} in {where}{f'; {choices}' if choices else ''}")
    return items


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
    """[[start, end, text], ...] with finite times of 0 s or more, each ending at or after its start,
    else a DataError naming `where` (the file and line)."""
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
        start, end = float(entry[0]), float(entry[1])
        if not (math.isfinite(start) and math.isfinite(end) and start >= 0):
            raise DataError(
                f"{where}: content[{i}] times must be finite seconds of 0 or more (got {entry!r})"
            )
        if end < start:
            raise DataError(
                f"{where}: content[{i}] ends at {end:g} s, before it starts at {start:g} s (got {entry!r}); "
                "fix its times"
            )
        triples.append((start, end, str(entry[2])))
    return triples


def add_common_arguments(
    parser: argparse.ArgumentParser, *, judge: bool = True, api_model: bool = False
) -> None:
    parser.add_argument(
        "--model",
        help="checkpoint folder or hub id streamed through our engine (the base model is just another "
        "checkpoint, e.g. Qwen/Qwen2.5-VL-7B-Instruct), or 'tiny'",
    )
    parser.add_argument("--data", type=path_arg, required=True, help="the benchmark's data folder or file")
    parser.add_argument(
        "--out",
        type=path_arg,
        required=True,
        help="output folder of this benchmark and these settings; rerun with the same one to resume",
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


# -- the run folder ---------------------------------------------------------------------------------

RUN_RECORD = "run.json"  # which benchmark, made with which settings, this folder's results are
OUT = "the output folder (--out)"


@contextmanager
def output_folder(
    out: Path, benchmark: str, settings: dict | None = None, shard: Shard | None = None
) -> Iterator[Path]:
    """The run folder `out`, created, checked and held while the benchmark writes into it.

    The one rule of a results folder: it holds one benchmark, made with one set of `settings` (a
    dict of the settings that change its answers, keyed by the flag or config name that sets them;
    None: a benchmark whose run replaces its results whole, where only the benchmark is checked).
    A folder that already holds results of another benchmark, or of this one made with settings
    that differ from these, is a ConfigError naming what differs; settings this run adds (a stage
    an earlier run did not do, e.g. a judge) join the record. A folder from before the record
    existed is taken for this benchmark's unless its results.json says otherwise. A folder that
    holds no results yet takes this run's record. The lock (one per shard, `shard`) refuses a
    second run of the same shard while this one writes; it ends with the process, killed or not.
    """
    folder = make_output_folder(out, OUT)
    with _lock(folder, benchmark, shard):
        _check_record(folder, benchmark, settings or {})
        yield folder


def bookkeeping(path: Path) -> bool:
    """Whether `path`, in a run folder, is `output_folder`'s own (the record or a lock), not a result."""
    return path.name == RUN_RECORD or path.name.startswith(".lock.")


def model_settings(args: argparse.Namespace, *, streaming: bool = False) -> dict:
    """The settings of the engine's config (the file, then the flags) that change a benchmark's answers:
    the checkpoint (`--model`, left out when not given: a run with nothing left to generate needs
    none), the dtype and the weight format; with `streaming`, the stream, cache and generation
    settings too. The device and the attention backend change how, not what, and may differ."""
    config = engine_config(args)
    settings: dict = {"--model": args.model} if args.model else {}
    settings.update({"--dtype": config.model.dtype, "--weights": config.model.weights})
    if streaming:
        from dataclasses import asdict

        settings.update(
            stream=asdict(config.stream), cache=asdict(config.cache), generation=asdict(config.generation)
        )
    return settings


def judging_settings(judge: ChatSettings | None, api: ChatSettings | None, baseline_run: Path | None) -> dict:
    """What changes a verdict, when this run judges: the judge's model and what it compares against
    (the API model, or the baseline run's folder)."""
    if not (judge and (api or baseline_run)):
        return {}
    baseline = f"api:{api.model}" if api else str(baseline_run.resolve())
    return {"--judge-model": judge.model, "baseline": baseline}


def _check_record(folder: Path, benchmark: str, settings: dict) -> None:
    path = folder / RUN_RECORD
    new = json.loads(json.dumps(jsonable(settings)))  # as the record will read back
    record = _read_record(path)
    if _holds_results(folder):
        if record is None:  # made before the record existed (or by something else)
            found = _benchmark_of_results(folder)
            if found not in (None, benchmark):
                raise ConfigError(
                    f"{OUT} '{folder}' already holds the results of {_run_of(found)}; give this {benchmark} "
                    "run a new --out"
                )
            record = {"benchmark": benchmark, "settings": {}}
        elif record["benchmark"] != benchmark:
            raise ConfigError(
                f"{OUT} '{folder}' already holds the results of {_run_of(record['benchmark'])}; give "
                f"this {benchmark} run a new --out"
            )
        old, now = record["settings"], _flat(new)
        differ = [
            f"{key} was {_shown(value)}, now {_shown(now[key])}"
            for key, value in _flat(old).items()
            if key in now and value != now[key]
        ]
        if differ:
            raise ConfigError(
                f"{OUT} '{folder}' holds {benchmark} results made with other settings "
                f"({'; '.join(differ)}); give a new --out for these settings, or rerun with the earlier "
                "ones to resume"
            )
        new = {**old, **new}
    write_json(path, {"benchmark": benchmark, "settings": new})


def _read_record(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        record = json.loads(read_text_file(path, "the run record"))
    except json.JSONDecodeError:
        record = None
    if not (isinstance(record, dict) and isinstance(record.get("benchmark"), str)):
        raise ConfigError(f"'{path}' is not a run record of python -m evals; give a new --out")
    if not isinstance(record.get("settings"), dict):
        record["settings"] = {}
    return record


def _holds_results(folder: Path) -> bool:
    """Whether `folder` holds results a run could lose or mix with: a results.json, or a JSON-lines
    file with something in it (a stage's finished items, a cache)."""
    if (folder / "results.json").exists():
        return True
    return any(p.is_file() and p.stat().st_size > 0 for p in folder.glob("*.jsonl"))


UNKNOWN = ""  # a results.json no benchmark wrote


def _benchmark_of_results(folder: Path) -> str | None:
    """Which benchmark made `folder`'s results.json (UNKNOWN: none); None when there is no results.json
    to say (only stage files). Efficiency and server-load record no name: their results are known by
    their shape."""
    path = folder / "results.json"
    if not path.exists():
        return None
    try:
        results = json.loads(read_text_file(path, "results.json"))
    except (json.JSONDecodeError, ConfigError):
        results = None
    if not isinstance(results, dict):
        return UNKNOWN
    meta = results.get("meta")
    task = meta.get("task") if isinstance(meta, dict) else None
    if isinstance(task, str):
        return task
    if "factors_vs_streaming" in results:
        return "efficiency"
    if "levels" in results:
        return "server-load"
    return UNKNOWN


def _run_of(benchmark: str) -> str:
    """'an ovobench run', 'a vqa run': which run results are of, in a message."""
    if benchmark == UNKNOWN:
        return "another program (a results.json of no benchmark)"
    return f"{'an' if benchmark[0] in 'aeio' else 'a'} {benchmark} run"


def _flat(settings: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _shown(value) -> str:
    return "not set" if value is None else json.dumps(value, ensure_ascii=False)


@contextmanager
def _lock(folder: Path, benchmark: str, shard: Shard | None) -> Iterator[None]:
    """An exclusive lock on `folder` for this shard (or this run), or a ConfigError naming the process
    that holds it. The lock is an open file's: it ends with the process however that ends."""
    try:
        import fcntl
    except ImportError:  # no advisory locks here: runs are not kept apart
        yield
        return
    tag = shard.tag if shard else "run"
    with open(folder / f".lock.{tag}", "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            which = f"shard {shard.index}/{shard.count} of " if shard and shard.count > 1 else ""
            raise ConfigError(
                f"another run (process {holder}) is writing {which}its results into {OUT} '{folder}' "
                f"now; wait for it to end, or give this {benchmark} run its own --out"
            ) from None
        except OSError:  # a file system without locks: runs are not kept apart
            pass
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield


def earlier_run(path: Path, benchmark: str, flag: str, *, results: bool = False) -> dict | None:
    """A finished run folder a benchmark compares against (`flag`: "--compare", "--baseline-run"): it
    exists, and is a `benchmark` run as far as its record or results say. Its results.json's contents
    with `results` (then it must have one), else None."""
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise ConfigError(f"{flag} '{path}' {what}; give the --out folder of an earlier {benchmark} run")
    record = _read_record(path / RUN_RECORD) if (path / RUN_RECORD).exists() else None
    found = record["benchmark"] if record else _benchmark_of_results(path)
    if found not in (None, benchmark):
        raise ConfigError(
            f"{flag} '{path}' holds the results of {_run_of(found)}; give the --out folder of an "
            f"earlier {benchmark} run"
        )
    if not results:
        return None
    file = path / "results.json"
    if not file.exists():
        raise ConfigError(
            f"{flag} '{path}' has no results.json (a run not finished yet?); finish that {benchmark} run "
            "or give another folder"
        )
    try:
        data = json.loads(read_text_file(file, f"{flag}'s results.json"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{file} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{file} does not hold a benchmark's results (not a JSON object)")
    return data


def baseline_generations(path: Path, benchmark: str) -> dict[str, dict]:
    """`--baseline-run`'s generated commentary by key (every shard's files): an earlier `benchmark` run
    that generated some, else a ConfigError saying what the folder is."""
    earlier_run(path, benchmark, "--baseline-run")
    records = ResultFile(path, "generations", Shard()).load()
    if not records:
        raise ConfigError(
            f"--baseline-run '{path}' holds no generated commentary (no generations.*.jsonl); give the "
            f"--out folder of an earlier {benchmark} run that generated some"
        )
    return records


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
