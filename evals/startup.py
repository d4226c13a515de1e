"""`python -m evals startup`: from process start to the first commentary, cold and warm.

Each run is a fresh `python` process that does what `python -m core run` does with a live feed:
load the model (`core.loading.open_engine`), start a session, then push one-second chunks of
synthetic HD frames as they would arrive, chunk k becoming complete k+1 chunk-lengths after the
model is ready (the child sleeps until then; a chunk that is late because the previous one was
slow is pushed at once). The parent notes the wall-clock time just before it starts the process;
the child notes when Python ran its first line, when the engine was built, and when each chunk
became complete and when its reply was done, and prints them as one JSON line.

The first run is **cold**: streamvlm's cache (STREAMVLM_CACHE, where the engine keeps the compile
caches it fills, core/compile_cache.py) points into an empty folder. The next `--warm` runs are
**warm**: the same folder, as the cold run left it. The engine compiles in the background while the
first chunks run eagerly (core/warmup.py): each run also reports how many chunks ran before the
switch, when the first compiled chunk was done, and the slowest chunk (the switch's cost lands on
the first compiled one). Reported per run: seconds from process start
to Python running, to the model loaded, to the first chunk done and to the first commentary (the
first chunk whose reply has text), the first commentary's delay after its chunk of video was
complete, and the slowest chunk. Also reported once: the weight files' size and the rate they read
from disk at (their pages evicted from the page cache first), the floor under loading them.
`--drop-page-cache` evicts them before every run too, so each run reads the weights from disk.

With random weights the model has nothing to say, so `--tokens` (20 by default) forces that many
tokens per chunk, as the efficiency benchmark does; `--tokens 0` leaves generation to the config.
`--random-weights 7b --weights-dir DIR` writes full-size random weights to DIR first (a new or empty
folder) and measures loading them, as the issue's H200 table asks.

`--app` times the desktop app the same way after the CLI's runs, cold then warm again (a compile cache of
its own): each run is a fresh `python -m app --model FOLDER --source CLIP --config FILE --start` under
Qt's offscreen platform (no display needed), streaming a clip of the synthetic scene at --resolution (as
long as --chunks, at the stream's frame rate) paced like a live feed, with the engine settings of the
CLI's runs, and a settings folder of its own (XDG_CONFIG_HOME: the user's saved choices are left alone).
The app reports its events through app/timeline.py (STREAMVLM_APP_TIMELINE, as the window receives
them); once it has shown --chunks replies (or its run ended) it gets SIGTERM, which stops and closes it
as Ctrl+C does. Its rows add the window shown; its "model loaded" is the stream starting (the engine
built), its chunk k's video complete when the pipeline had it whole, and a chunk that came late is
dropped as the app drops it (counted in results.json as `skipped_chunks`). It needs PySide6 and PyAV
(checked first, in a child that starts Qt offscreen); on a GPU machine, the Qt bundle that
evals/scripts/qt_bundle.py builds.

Writes results.json and summary.md to --out and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import logging
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from core.cli_args import add_engine_arguments, engine_overrides, number, parse_resolution, path_arg
from core.config import resolve_config
from core.errors import ConfigError
from core.paths import make_output_folder
from evals.report import table, write_outputs
from evals.results import run_meta
from evals.runner import output_folder

log = logging.getLogger(__name__)
WEIGHT_SUFFIXES = (".safetensors", ".bin")
TIMEOUT_S = 3600.0  # one run: a 7B cold start with compilation takes minutes, not an hour


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="checkpoint folder, hub id (downloaded first) or 'tiny'")
    which.add_argument(
        "--random-weights",
        choices=["7b", "tiny"],
        help="write random weights to --weights-dir, then time them",
    )
    parser.add_argument("--weights-dir", type=path_arg, help="with --random-weights: a new or empty folder")
    parser.add_argument(
        "--warm", type=number(0, 100, integer=True), default=2, help="warm runs after the cold one"
    )
    parser.add_argument(
        "--chunks", type=number(1, 10_000, integer=True), default=10, help="chunks streamed per run"
    )
    parser.add_argument("--resolution", default="1280x720", help="synthetic frame size WxH")
    parser.add_argument(
        "--tokens",
        type=number(0, 4096, integer=True),
        default=20,
        help="tokens forced per chunk (0: the config's generation settings)",
    )
    parser.add_argument(
        "--compile-cache",
        type=path_arg,
        help="the folder the runs' compile caches go to: new or empty (default: a temporary one, removed)",
    )
    parser.add_argument(
        "--drop-page-cache",
        action="store_true",
        help="evict the weight files from the page cache before every run (each run reads them from disk)",
    )
    parser.add_argument(
        "--app",
        action="store_true",
        help="also time the desktop app (python -m app, offscreen), cold and warm, after the CLI's runs",
    )
    parser.add_argument(
        "--out", type=path_arg, default=None, help="output folder (default runs/startup-TIME)"
    )
    add_engine_arguments(parser, ("device", "dtype", "attn"))


def engine_settings(args: argparse.Namespace, *, weights_dir_needed: bool = True) -> dict:
    """The engine overrides of the flags, `--tokens` forced per chunk; `--weights-dir` checked to go with
    `--random-weights`, and (`weights_dir_needed`: startup, which times loading them) the other way."""
    overrides = engine_overrides(args)
    if args.tokens:
        overrides["generation"] = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens, "seed": 0}
    if weights_dir_needed and args.random_weights and not args.weights_dir:
        raise ConfigError("--random-weights needs --weights-dir, the folder to write them to")
    if args.weights_dir and not args.random_weights:
        raise ConfigError("--weights-dir goes with --random-weights; pass a checkpoint folder with --model")
    return overrides


def run(args: argparse.Namespace) -> int:
    width, height = parse_resolution(args.resolution, minimum=32)
    overrides = engine_settings(args)
    config = resolve_config(args.config, overrides)  # checked before torch loads
    for flag, folder in (("--weights-dir", args.weights_dir), ("--compile-cache", args.compile_cache)):
        if folder is not None and folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise ConfigError(f"{flag} {folder} is not an empty folder; pass a new or empty one")
    if args.app:
        if width % 2 or height % 2:
            raise ConfigError(
                f"--app streams a video file, whose frames need an even width and height (got {width}x{height})"
            )
        _app_works()  # before minutes of writing weights
    out = args.out or Path("runs") / f"startup-{time.strftime('%Y%m%d-%H%M%S')}"
    for flag, folder in (("--weights-dir", args.weights_dir), ("--compile-cache", args.compile_cache)):
        if folder is not None:
            make_output_folder(folder, flag)
    with output_folder(out, "startup"):
        return _startup(args, config, overrides, (width, height), out)


def _startup(args: argparse.Namespace, config, overrides: dict, size: tuple[int, int], out: Path) -> int:
    width, height = size

    if args.random_weights:
        folder = write_random(args.random_weights, args.weights_dir, config)
    else:
        from rich.console import Console

        from core.download import progress_bar
        from core.loading import model_folder

        with progress_bar(Console(stderr=True)) as show:
            folder = model_folder(args.model, progress=show)  # downloaded here, never inside a timed run
    weights = [p for p in sorted(folder.iterdir()) if p.suffix in WEIGHT_SUFFIXES]
    disk = _disk_read(weights)

    owned = args.compile_cache is None
    caches = Path(tempfile.mkdtemp(prefix="streamvlm-startup-")) if owned else args.compile_cache
    spec = {
        "model": str(folder),
        "config": str(args.config) if args.config else None,
        "overrides": {**overrides, "model": {**overrides.get("model", {}), "path": str(folder)}},
        "chunks": args.chunks,
        "resolution": [width, height],
    }
    runs = []
    work = Path(tempfile.mkdtemp(prefix="streamvlm-startup-app-")) if args.app else None
    try:
        measures = {"CLI": lambda k: _measure(spec, caches / "cli")}
        if work is not None:
            app = _app_inputs(spec, work)
            measures["app"] = lambda k: _measure_app(spec, app, caches / "app", work / f"run-{k + 1}")
        for process, measure in measures.items():
            for k in range(1 + args.warm):  # each process's first run fills its own empty compile cache
                if args.drop_page_cache:
                    _evict(weights)
                kind = "cold" if k == 0 else "warm"
                log.info("%s run %d of %d (%s compile cache)", process, k + 1, 1 + args.warm, kind)
                runs.append({"process": process, "run": k + 1, "cache": kind, **measure(k)})
    finally:
        if owned:
            shutil.rmtree(caches, ignore_errors=True)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)

    results = {
        "meta": {
            **run_meta("startup", {**spec, "drop_page_cache": args.drop_page_cache, "app": args.app}),
            "device": runs[0]["device"],
            "weights_bytes": disk["bytes"],
            "disk_read_gbps": disk["gbps"],
        },
        "runs": runs,
        "summary": _summary(runs),
    }
    markdown = _markdown(results)
    write_outputs(out, results, markdown)
    print(markdown)
    print(f"wrote {out}/results.json and summary.md")
    return 0


# -- one run: the parent's side ---------------------------------------------------------------------


def _measure(spec: dict, caches: Path) -> dict:
    """Start a fresh process that loads and streams; its timeline in seconds from its start."""
    started = time.time()
    child = subprocess.run(
        [sys.executable, "-m", "evals.startup", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=_child_env(caches),
        timeout=TIMEOUT_S,
    )
    lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
    if child.returncode != 0 or not lines:
        said = child.stderr.strip().splitlines() or ["(nothing on stderr)"]
        log.error("the run's stderr, last lines:\n%s", "\n".join(said[-15:]))
        raise ConfigError(f"a startup run failed (exit {child.returncode}): {said[-1][:200]}")
    return timeline(json.loads(lines[-1]), started)


def _child_env(caches: Path) -> dict[str, str]:
    """A run's environment: the compile caches in `caches`, the repository importable."""
    from core.compile_cache import CACHE_VARIABLES

    return {
        **{k: v for k, v in os.environ.items() if k not in CACHE_VARIABLES},  # the engine's own placement
        "STREAMVLM_CACHE": str(caches / "streamvlm"),  # the model is a folder: no tiny model built here
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")])
        ),
    }


# -- one app run: the parent's side --------------------------------------------------------------------

APP_TIMELINE = (
    "STREAMVLM_APP_TIMELINE"  # app/timeline.py's ENV (evals import no app code: tests/test_layering.py)
)
APP_PROBE = "from PySide6.QtWidgets import QApplication; import av; QApplication(['probe'])"


def _app_works() -> None:
    """The app's needs (PySide6, its offscreen platform, PyAV) start here, in a child as the runs will."""
    probe = subprocess.run(
        [sys.executable, "-c", APP_PROBE],
        capture_output=True,
        text=True,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
        timeout=120,
    )
    if probe.returncode != 0:
        said = (probe.stderr.strip().splitlines() or ["(nothing on stderr)"])[-1][:200]
        raise ConfigError(
            f"--app needs PySide6 and PyAV, and Qt does not start here ({said}); install "
            "'streamvlm[gui]', or on a GPU machine the bundle of evals/scripts/qt_bundle.py"
        )


def _app_inputs(spec: dict, work: Path) -> dict:
    """What every app run is given: the clip it streams and the engine settings of the CLI's runs."""
    from core.synthetic import write_clip

    config = resolve_config(spec["config"], spec["overrides"])
    stream = config.stream
    width, height = spec["resolution"]
    clip = write_clip(
        work / "clip.mp4",
        seconds=spec["chunks"] * stream.chunk_seconds,
        width=width,
        height=height,
        fps=stream.fps,
    )
    settings = work / "config.yaml"
    settings.write_text(yaml.safe_dump(_plain(dataclasses.asdict(config)), sort_keys=False))
    return {"clip": str(clip), "config": str(settings)}


def _plain(value):
    """A config's values as YAML writes them: enums by value, tuples as lists."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {key: _plain(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _measure_app(spec: dict, inputs: dict, caches: Path, work: Path) -> dict:
    """Start a fresh `python -m app --start` offscreen; its timeline in seconds from its start."""
    work.mkdir(parents=True)
    events = work / "timeline.jsonl"
    env = {
        **_child_env(caches),
        "QT_QPA_PLATFORM": "offscreen",  # no window on anyone's desktop; no display needed
        "XDG_CONFIG_HOME": str(work / "settings"),  # the app saves its choices here, not over the user's
        APP_TIMELINE: str(events),
    }
    command = [sys.executable, "-m", "app", "--model", spec["model"], "--source", inputs["clip"]]
    command += ["--config", inputs["config"], "--start"]
    started = time.time()
    with open(work / "stderr.txt", "w+") as stderr:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        try:
            records = _follow(child, events, spec["chunks"])
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)  # stops the run and closes the window (app/signals.py)
                try:
                    child.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        stderr.seek(0)
        said = stderr.read()
    try:
        return timeline(app_events(records), started)
    except ConfigError as exc:
        log.error("the app's stderr, last lines:\n%s", "\n".join(said.strip().splitlines()[-15:]))
        raise ConfigError(f"an app run failed (exit {child.returncode}): {exc}") from None


def _follow(child: subprocess.Popen, path: Path, chunks: int) -> list[dict]:
    """The app's timeline records once `chunks` replies came, its run ended, or the app did."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        ended = child.poll() is not None  # read again after it ended: its last lines are in
        # Whole lines only: the app may be writing the last one.
        written = path.read_text().split("\n")[:-1] if path.exists() else []
        records = [json.loads(line) for line in written]
        events = [r["event"] for r in records]
        if ended or events.count("chunk") >= chunks or {"failed", "finished"} & set(events):
            return records
        if time.monotonic() > deadline:
            raise ConfigError(f"an app run took over {TIMEOUT_S:.0f} s")
        time.sleep(0.1)


def app_events(records: list[dict]) -> dict:
    """The app's timeline records (app/timeline.py) as the events `timeline` takes. A chunk was complete
    `latency` before the pipeline handed its reply over, and could start when it was complete and the
    one before had been handed over; it is done when the window got its reply."""
    failed = next((r for r in records if r["event"] == "failed"), None)
    if failed is not None:
        raise ConfigError(f"the app's run failed: {failed['reason']}")
    first = {}
    for r in records:
        first.setdefault(r["event"], r)
    streaming = next((r for r in records if r["event"] == "phase" and r["phase"] == "streaming"), None)
    replies = [r for r in records if r["event"] == "chunk"]
    if "python" not in first or streaming is None or not replies:
        raise ConfigError("the app ended before it streamed a chunk")
    chunks, previous = [], -math.inf
    for r in replies:
        handed = r["ran"] if r["ran"] is not None else r["t"]
        complete = handed - r["latency"]
        chunks.append(
            {
                "complete": complete,
                "pushed": max(complete, previous),
                "done": r["t"],
                "text": r["text"],
                "compiled": r["compiled"],
            }
        )
        previous = handed
    last = replies[-1]
    return {
        "python": first["python"]["t"],
        "shown": first["shown"]["t"] if "shown" in first else None,
        "loaded": streaming["t"],
        "chunks": chunks,
        "compile_thread_s": last["compile_thread_s"],
        "device": last["device"],
        "dtype": last["dtype"],
        "skipped": last["skipped"],
    }


def timeline(events: dict, started: float) -> dict:
    """The child's wall-clock events as the reported figures, in seconds from `started`."""
    chunks = events["chunks"]
    spoken = next((c for c in chunks if c["text"].strip()), None)
    compiled = next((c for c in chunks if c["compiled"]), None)
    return {
        "device": events["device"],
        "dtype": events["dtype"],
        "python_s": round(events["python"] - started, 3),
        "window_s": round(events["shown"] - started, 3) if events.get("shown") is not None else None,
        "loaded_s": round(events["loaded"] - started, 3),
        # where loading went (the CLI's child: imports, then the weights, then the engine's set-up)
        "imported_s": round(events["imported"] - started, 3) if events.get("imported") else None,
        "weights_s": round(events["weights"] - started, 3) if events.get("weights") else None,
        "first_chunk_s": round(chunks[0]["done"] - started, 3),
        "first_commentary_s": round(spoken["done"] - started, 3) if spoken else None,
        # How long after its video was complete the first commentary came (the target).
        "first_commentary_after_chunk_s": round(spoken["done"] - spoken["complete"], 3) if spoken else None,
        "slowest_chunk_s": round(max(c["done"] - c["pushed"] for c in chunks), 3),
        "eager_chunks": sum(1 for c in chunks if not c["compiled"]),
        "first_compiled_chunk_s": round(compiled["done"] - started, 3) if compiled else None,
        "chunk_s": [round(c["done"] - c["pushed"], 3) for c in chunks],
        "chunk_phases_ms": [c.get("phases_ms") for c in chunks],
        "compile_thread_s": events.get("compile_thread_s"),
        "first_text": spoken["text"][:80] if spoken else "",
        "skipped_chunks": events.get("skipped", 0),
    }


# -- one run: the child's side ----------------------------------------------------------------------


def child(spec: dict) -> dict:
    """Load and stream as `python -m core run` does; the wall-clock time of each step."""
    python = time.time()
    from core.prefetch import prefetch_weights

    prefetch_weights(spec["overrides"].get("model", {}).get("path"))  # as `core run`, before torch imports
    import numpy as np

    from core.loading import model_from_config, open_engine
    from core.synthetic import synthetic_frames

    imported = time.time()  # torch and transformers imported (core.loading imports both)
    config = resolve_config(spec["config"], spec["overrides"])
    stream = config.stream
    width, height = spec["resolution"]
    n = stream.frames_per_chunk
    # Made before the clock matters: a live source delivers frames, it does not draw them.
    pool = [
        np.ascontiguousarray(f) for f in synthetic_frames(width, height, stream.fps, 4 * stream.chunk_seconds)
    ]
    model = model_from_config(config)
    weights = time.time()  # the model's weights on the device (tokenizer and processor too)
    engine = open_engine(config, model)
    loaded = time.time()
    chunks = []
    with engine.start() as session:
        for k in range(spec["chunks"]):
            complete = loaded + (k + 1) * stream.chunk_seconds
            time.sleep(max(0.0, complete - time.time()))
            pushed = time.time()
            frames = [pool[(k * n + i) % len(pool)] for i in range(n)]
            lines = session.push(frames, k * stream.chunk_seconds, (k + 1) * stream.chunk_seconds)
            stats = session.last_stats
            chunks.append(
                {
                    "complete": complete,
                    "pushed": pushed,
                    "done": time.time(),
                    "text": " ".join(line.text for line in lines),
                    "compiled": stats.compiled,
                    # where a slow chunk's time went (a stall while compiling: eager Python or GPU)
                    "phases_ms": {
                        name: round(getattr(stats, f"{name}_ms"), 1)
                        for name in ("queue", "vision", "evict", "prefill", "decode")
                    },
                }
            )
    warmup = engine.model.warmup
    return {
        "python": python,
        "imported": imported,
        "weights": weights,
        "loaded": loaded,
        "chunks": chunks,
        "compile_thread_s": round(warmup.seconds, 3)
        if warmup is not None and warmup.finished.is_set()
        else None,
        "device": device_name(engine.model.device),
        "dtype": str(engine.model.dtype),
    }


# -- pieces ----------------------------------------------------------------------------------------


def write_random(preset: str, folder: Path, config) -> Path:
    """Random weights of `preset` as a checkpoint folder, on the device and in the dtype the runs use."""
    from core.builders import write_random_checkpoint

    log.info("writing random %s weights to %s", preset, folder)
    return write_random_checkpoint(folder, preset, device=config.model.device, dtype=config.model.dtype)


def _disk_read(files: list[Path]) -> dict:
    """The bytes of `files` and the rate they read from disk at, their cached pages evicted first."""
    _evict(files)
    total, started = 0, time.perf_counter()
    buffer = bytearray(64 << 20)
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                total += n
    seconds = time.perf_counter() - started
    return {"bytes": total, "gbps": round(total / seconds / 1e9, 2) if seconds > 0 and total else None}


def _evict(files: list[Path]) -> None:
    """Drop `files` from the page cache (written back first: dirty pages are not dropped)."""
    if not hasattr(os, "posix_fadvise"):
        return
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _summary(runs: list[dict]) -> list[dict]:
    """Per process (CLI, app) and cache state, the median of each figure over its runs."""
    rows = []
    for process in ("CLI", "app"):
        for kind in ("cold", "warm"):
            chosen = [r for r in runs if r["process"] == process and r["cache"] == kind]
            if not chosen:
                continue
            row = {"process": process, "cache": kind, "runs": len(chosen)}
            for key in FIGURES:
                values = [r[key] for r in chosen if r.get(key) is not None]
                row[key] = round(statistics.median(values), 3) if values else None
            rows.append(row)
    return rows


# The table's figures and their column titles; the window's only where the app ran.
COLUMNS = {
    "python_s": "Python up (s)",
    "window_s": "window shown (s)",
    "imported_s": "imports done (s)",
    "weights_s": "weights loaded (s)",
    "loaded_s": "model loaded (s)",
    "first_chunk_s": "first chunk done (s)",
    "first_commentary_s": "first commentary (s)",
    "first_commentary_after_chunk_s": "commentary after its chunk (s)",
    "slowest_chunk_s": "slowest chunk (s)",
    "eager_chunks": "eager chunks",
    "first_compiled_chunk_s": "first compiled chunk done (s)",
}
FIGURES = tuple(COLUMNS)


def header(with_app: bool) -> list[str]:
    """The summary table's header: with the window's column when app runs are in it."""
    shown = [title for key, title in COLUMNS.items() if with_app or key != "window_s"]
    return ["process", "compile cache", "runs", *shown]


def _markdown(results: dict) -> str:
    meta = results["meta"]
    with_app = any(s["process"] == "app" for s in results["summary"])
    keys = [key for key in FIGURES if with_app or key != "window_s"]
    rows = [[s["process"], s["cache"], s["runs"], *(s[key] for key in keys)] for s in results["summary"]]
    rate = f"{meta['disk_read_gbps']} GB/s" if meta["disk_read_gbps"] else "-"
    return (
        f"Startup of {meta['config']['model']} on {meta['device']}: seconds from process start "
        f"(medians); weights {meta['weights_bytes'] / 1e9:.2f} GB, read from disk at {rate}.\n\n"
        + table(header(with_app), rows)
    )


def device_name(device) -> str:
    """A GPU's name ('NVIDIA H200'), or 'cpu'."""
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


if __name__ == "__main__":  # the child: python -m evals.startup SPEC
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    print(json.dumps(child(json.loads(sys.argv[1]))), flush=True)
