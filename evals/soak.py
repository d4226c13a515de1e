"""`python -m evals soak`: a long stream through the whole pipeline, watched for slow leaks.

Streams `--seconds` of stream time, as fast as the machine runs it, through what `python -m core run`
assembles: a source (a synthetic scene, or `--source FILE` looped), the chunker, a session (the
engine, or `--remote`: the same engine behind an `InferenceServer` on a loopback port and a
`RemoteSession` client), the SRT/WebVTT/JSON-lines writers and the recorder (MP4 with the commentary
burned in). Every `--every` chunks it samples the process's memory (RSS), open file descriptors,
threads, the session's cached tokens and largest position, the chunk's time, and on a GPU the
memory allocated there. Writes results.json, summary.md and soak.png to --out.

It fails (exit 1, the reasons printed) when after warm-up (`--warmup` seconds of stream; caches,
allocator pools and encoder buffers fill during it): RSS grew by more than `--rss-tolerance`
percent, descriptors or threads grew at all, the cached tokens varied by more than the time labels
explain (`TOKEN_SLACK`), a position passed the model's trained context or grew after warm-up, or
the mean chunk time of the last `--time-window` seconds of stream was more than `--time-tolerance`
percent above that of the first window after warm-up (a cost that creeps up with the stream's age).
Each sample is also appended to samples.jsonl as it is taken, so a run cut short (a device call's time
limit, a crash) still leaves its figures.

    python -m evals soak --model tiny --seconds 86400 --out runs/soak-cpu            # 24 h, CPU
    python -m evals soak --random-weights 7b --seconds 3000 --every 60 --warmup 300 \\
        --resolution 1280x720 --out runs/soak-h200                                   # on a GPU

`--random-weights` builds the weights in memory; with `--weights-dir` it writes them as a checkpoint
folder first and loads that, through the loading path a real checkpoint takes.

With random weights the model has nothing to say, so `--tokens` (8 by default) forces that many
tokens per chunk (the efficiency benchmark does the same); `--tokens 0` leaves it to the config.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import logging
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from core.cli_args import add_engine_arguments, number, parse_resolution, path_arg
from core.config import resolve_config
from core.errors import ConfigError
from core.paths import make_output_folder
from core.types import Frame
from evals.report import table, write_outputs
from evals.results import run_meta
from evals.runner import bookkeeping, output_folder

log = logging.getLogger(__name__)

# Stream time in the model's time labels gains a digit at 10 s, 100 s, ...: each label in the kept
# vision window and reply window may grow by a token or two, so the cache's size drifts by that much.
TOKEN_SLACK = 64
LOOP_SECONDS = 30.0  # the synthetic scene drawn once and looped: a live feed delivers, it does not draw


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="checkpoint folder, hub id or 'tiny'")
    which.add_argument(
        "--random-weights", choices=["7b", "tiny"], help="random weights of this size, built in memory"
    )
    parser.add_argument(
        "--weights-dir",
        type=path_arg,
        help="with --random-weights: write them here (a new or empty folder) and load",
    )
    parser.add_argument(
        "--seconds", type=number(1, 10**7, low_open=False), default=3600.0, help="stream time to soak"
    )
    parser.add_argument(
        "--every", type=number(1, 10**6, integer=True), default=300, help="sample every N chunks"
    )
    parser.add_argument(
        "--warmup", type=number(0, 10**7), default=600.0, help="stream seconds before the baseline sample"
    )
    parser.add_argument(
        "--rss-tolerance", type=number(0, 100), default=2.0, help="percent RSS growth allowed"
    )
    parser.add_argument(
        "--time-tolerance",
        type=number(0, 1000),
        default=2.0,
        help="percent the last window's chunk time may exceed the first's",
    )
    parser.add_argument(
        "--time-window",
        type=number(1, 10**7),
        default=600.0,
        help="stream seconds of the first and last windows compared",
    )
    parser.add_argument("--resolution", default="160x96", help="synthetic frame size WxH")
    parser.add_argument(
        "--source", type=path_arg, help="a video file, looped, instead of the synthetic scene"
    )
    parser.add_argument(
        "--remote", action="store_true", help="through a loopback server and a remote session"
    )
    parser.add_argument("--no-record", action="store_true", help="leave the recorder out")
    parser.add_argument(
        "--tokens", type=number(0, 4096, integer=True), default=8, help="tokens forced per chunk (0: config)"
    )
    parser.add_argument("--out", type=path_arg, default=None, help="output folder (default runs/soak-TIME)")
    add_engine_arguments(parser, ("device", "dtype", "attn"))


def run(args: argparse.Namespace) -> int:
    from evals.startup import engine_settings

    width, height = parse_resolution(args.resolution, minimum=32)
    overrides = engine_settings(args, weights_dir_needed=False)
    if (
        args.weights_dir
        and args.weights_dir.exists()
        and (not args.weights_dir.is_dir() or any(args.weights_dir.iterdir()))
    ):
        raise ConfigError(f"--weights-dir {args.weights_dir} is not an empty folder; pass a new or empty one")
    if args.source is not None and not args.source.is_file():
        raise ConfigError(f"--source {args.source} is not a file; pass a video file")
    out = args.out or Path("runs") / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and (not out.is_dir() or any(not bookkeeping(p) for p in out.iterdir())):
        raise ConfigError(
            f"--out {out} is not an empty folder; pass a new or empty one (nothing is overwritten)"
        )
    config = resolve_config(args.config, overrides)  # checked before torch loads
    if args.weights_dir:
        make_output_folder(args.weights_dir, "--weights-dir")
    with output_folder(out, "soak"):
        return _soak_run(args, config, overrides, out, (width, height))


def _soak_run(args: argparse.Namespace, config, overrides: dict, out: Path, size: tuple[int, int]) -> int:
    from evals.startup import write_random

    model = None
    if args.random_weights and args.weights_dir:
        folder = write_random(args.random_weights, args.weights_dir, config)
        overrides["model"] = {**overrides.get("model", {}), "path": str(folder)}
    elif args.random_weights:
        from core.builders import build_random_model

        m = config.model
        model = build_random_model(
            args.random_weights, device=m.device, dtype=m.dtype, attn=m.attn, acceleration=config.acceleration
        )
    else:
        overrides["model"] = {**overrides.get("model", {}), "path": args.model}
    config = resolve_config(args.config, overrides)

    samples, meta = soak(config, args, out, size, model)
    verdict = judge(
        samples,
        args.warmup,
        args.rss_tolerance,
        meta["position_bound"],
        time_tolerance=args.time_tolerance,
        time_window=args.time_window,
    )
    results = {
        "meta": {**run_meta("soak", {**vars(args), "out": str(out)}), **meta},
        "samples": samples,
        "verdict": verdict,
    }
    markdown = _markdown(results)
    write_outputs(out, results, markdown, plot=lambda folder: _plot(folder / "soak.png", samples))
    print(markdown)
    print(f"wrote {out}/results.json, summary.md and soak.png")
    return 0 if verdict["ok"] else 1


def soak(
    config, args: argparse.Namespace, out: Path, size: tuple[int, int], model=None
) -> tuple[list[dict], dict]:
    """Stream and sample; (the samples, what the run was). `model`: one already built (random weights)."""
    import psutil

    from core.loading import open_engine
    from core.media.recorder import Recorder
    from core.media.subtitles import open_writers
    from core.pipeline import Pipeline

    stream = config.stream
    engine = open_engine(config, model)
    partial = (out / "samples.jsonl").open("a", encoding="utf-8")
    process = psutil.Process()
    frames = _looped(args.source, size, stream.fps)
    samples: list[dict] = []
    started = time.perf_counter()
    chunk_times: list[float] = []
    with contextlib.ExitStack() as stack:
        writers = stack.enter_context(
            open_writers(srt=out / "soak.srt", vtt=out / "soak.vtt", jsonl=out / "soak.jsonl")
        )
        recorder = None if args.no_record else stack.enter_context(Recorder(out / "soak.mp4", stream.fps))
        stack.callback(partial.close)
        session = stack.enter_context(_session(engine, args.remote))
        pipeline = Pipeline(
            frames,
            session,
            stream,
            live=False,
            duration=args.seconds,
            recorder=recorder,
            sinks=(writers.write,),
        )
        for k, report in enumerate(pipeline.run(), start=1):
            chunk_times.append(report.latency)
            if k % args.every == 0 or report.t_end >= args.seconds:
                gc.collect()
                stats = getattr(session, "last_stats", None)
                samples.append(
                    {
                        "chunk": k,
                        "stream_s": report.t_end,
                        "wall_s": round(time.perf_counter() - started, 3),
                        "rss_mib": round(process.memory_info().rss / 2**20, 2),
                        "fds": process.num_fds(),
                        "threads": threading.active_count(),
                        "os_threads": process.num_threads(),
                        "cached_tokens": stats.cached_tokens if stats else None,
                        "max_position": stats.max_position if stats else None,
                        "chunk_ms": round(1000 * statistics.mean(chunk_times), 3),
                        "gpu_mib": _gpu_mib(engine),
                    }
                )
                chunk_times.clear()
                partial.write(json.dumps(samples[-1]) + "\n")
                partial.flush()
                log.info("soak: %s", samples[-1])
    meta = {
        "device": str(engine.model.device),
        "chunks": samples[-1]["chunk"] if samples else 0,
        "wall_s": round(time.perf_counter() - started, 1),
        "position_bound": _position_bound(engine),
        "remote": args.remote,
        "recorded": not args.no_record,
    }
    return samples, meta


def judge(
    samples: list[dict],
    warmup: float,
    rss_tolerance: float,
    position_bound: int | None,
    *,
    time_tolerance: float = 2.0,
    time_window: float = 600.0,
) -> dict:
    """Whether the run stayed flat after `warmup` stream seconds; the reasons when it did not."""
    after = [s for s in samples if s["stream_s"] >= warmup] or samples[-1:]
    base, last = after[0], after[-1]
    reasons = []
    growth = 100.0 * (last["rss_mib"] - base["rss_mib"]) / base["rss_mib"]
    if growth > rss_tolerance:
        reasons.append(f"RSS grew {growth:.2f}% after warm-up ({base['rss_mib']} -> {last['rss_mib']} MiB)")
    for key in ("fds", "threads", "os_threads"):
        if last[key] > base[key]:
            reasons.append(f"{key} grew after warm-up ({base[key]} -> {last[key]})")
    tokens = [s["cached_tokens"] for s in after if s["cached_tokens"] is not None]
    if tokens and max(tokens) - min(tokens) > TOKEN_SLACK:
        reasons.append(f"cached tokens varied from {min(tokens)} to {max(tokens)} after warm-up")
    positions = [s["max_position"] for s in after if s["max_position"] is not None]
    if positions and max(positions) > positions[0] + TOKEN_SLACK:
        reasons.append(f"positions grew after warm-up ({positions[0]} -> {max(positions)})")
    if positions and position_bound is not None and max(positions) >= position_bound:
        reasons.append(f"position {max(positions)} passed the model's context of {position_bound}")
    gpu = [s["gpu_mib"] for s in after if s["gpu_mib"] is not None]
    if gpu and max(gpu) > gpu[0] * (1 + rss_tolerance / 100):
        reasons.append(f"GPU memory grew after warm-up ({gpu[0]} -> {max(gpu)} MiB)")
    first_ms, last_ms = _window_means(after, time_window)
    time_change = 100.0 * (last_ms - first_ms) / first_ms if first_ms else None
    if time_change is not None and time_change > time_tolerance:
        reasons.append(
            f"chunk time grew {time_change:.1f}% from the first to the last {time_window:g} s of stream "
            f"({first_ms:.1f} -> {last_ms:.1f} ms)"
        )
    return {
        "ok": not reasons,
        "reasons": reasons,
        "rss_growth_pct": round(growth, 3),
        "baseline_chunk": base["chunk"],
        "chunk_ms_first_window": round(first_ms, 3) if first_ms else None,
        "chunk_ms_last_window": round(last_ms, 3) if last_ms else None,
        "chunk_time_change_pct": round(time_change, 2) if time_change is not None else None,
    }


def _window_means(after: list[dict], window: float) -> tuple[float | None, float | None]:
    """Mean chunk time over the samples of the first and of the last `window` stream seconds (each
    sample's `chunk_ms` is the mean of the chunks since the one before, so they weigh equally when
    sampled every N chunks); (None, None) when the stream after warm-up is shorter than two windows."""
    if len(after) < 2 or after[-1]["stream_s"] - after[0]["stream_s"] < 2 * window:
        return None, None
    # the baseline sample's chunk_ms covers chunks before it (warm-up): it starts no window
    start, end = after[0]["stream_s"], after[-1]["stream_s"]
    first = [s["chunk_ms"] for s in after[1:] if s["stream_s"] <= start + window]
    last = [s["chunk_ms"] for s in after[1:] if s["stream_s"] > end - window]
    if not first or not last:
        return None, None
    return statistics.mean(first), statistics.mean(last)


def _looped(source: Path | None, size: tuple[int, int], fps: float) -> Iterator[Frame]:
    """Frames at k / fps without end: a loop of the synthetic scene, or of a file's frames."""
    import numpy as np

    if source is not None:
        from core.media.sources import FileSource

        with FileSource(source, fps) as file:
            pool = [frame.rgb for frame in file]
    else:
        from core.synthetic import synthetic_frames

        pool = [np.ascontiguousarray(f) for f in synthetic_frames(*size, fps, LOOP_SECONDS)]
    for k in itertools.count():
        yield Frame(pool[k % len(pool)], k / fps)


@contextlib.contextmanager
def _session(engine, remote: bool):
    if not remote:
        with engine.start() as session:
            yield session
        return
    from core.remote.client import RemoteSession
    from core.remote.server import InferenceServer, ServerThread

    server = ServerThread(InferenceServer(engine, max_sessions=1, idle_timeout=600))
    try:
        with RemoteSession(server.url) as session:
            yield session
    finally:
        server.stop()


def _gpu_mib(engine) -> float | None:
    if engine.model.device.type != "cuda":
        return None
    import torch

    return round(torch.cuda.memory_allocated(engine.model.device) / 2**20, 1)


def _position_bound(engine) -> int | None:
    """The model's trained context (max_position_embeddings), where its config says."""
    config = getattr(getattr(engine.model, "model", None), "config", None)
    for part in (getattr(config, "text_config", None), config):
        bound = getattr(part, "max_position_embeddings", None)
        if isinstance(bound, int):
            return bound
    return None


HEADER = [
    "chunk",
    "stream (h)",
    "wall (s)",
    "RSS (MiB)",
    "fds",
    "threads",
    "cached tokens",
    "max pos",
    "chunk (ms)",
    "GPU (MiB)",
]


def _markdown(results: dict) -> str:
    meta, verdict, samples = results["meta"], results["verdict"], results["samples"]
    shown = samples if len(samples) <= 24 else samples[:: max(1, len(samples) // 24)] + samples[-1:]
    rows = [
        [
            s["chunk"],
            round(s["stream_s"] / 3600, 3),
            s["wall_s"],
            s["rss_mib"],
            s["fds"],
            s["threads"],
            s["cached_tokens"],
            s["max_position"],
            s["chunk_ms"],
            s["gpu_mib"],
        ]
        for s in shown
    ]
    rate = samples[-1]["stream_s"] / samples[-1]["wall_s"] if samples and samples[-1]["wall_s"] else None
    head = (
        f"Soak of {meta['config']['model'] or meta['config']['random_weights']} on {meta['device']}"
        f"{' (remote session)' if meta['remote'] else ''}: {meta['chunks']} chunks in {meta['wall_s']} s"
        f" ({rate:.1f}x real time); RSS growth after warm-up {verdict['rss_growth_pct']}% "
        f"(baseline chunk {verdict['baseline_chunk']}); "
        + (
            f"chunk time {verdict['chunk_ms_first_window']} -> {verdict['chunk_ms_last_window']} ms "
            f"({verdict['chunk_time_change_pct']:+}%) first to last window; "
            if verdict.get("chunk_time_change_pct") is not None
            else ""
        )
        + ("PASS" if verdict["ok"] else "FAIL: " + "; ".join(verdict["reasons"]))
        + "\n\n"
    )
    return head + table(HEADER, rows)


def _plot(path: Path, samples: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = [s["stream_s"] / 3600 for s in samples]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key, label in zip(
        axes, ("rss_mib", "chunk_ms", "cached_tokens"), ("RSS (MiB)", "chunk (ms)", "cached tokens")
    ):
        ax.plot(hours, [s[key] if s[key] is not None else float("nan") for s in samples], marker=".")
        ax.set_xlabel("stream time (h)")
        ax.set_ylabel(label)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
