"""`python -m evals efficiency`: per-chunk latency and memory of the engine against stream length.

Streams N seconds of video (a file, or synthetic frames at a chosen resolution) through each
policy in turn: `stock` (stock transformers `generate` over one growing cache: evals/stock.py),
`streaming` (the method), `recompute` (the same windows rebuilt every chunk) and `none` (our
engine with full attention, the cache grows until memory runs out). Every chunk is forced to
generate the same number of tokens so the work is comparable. Reports, per chunk: vision,
prefill and decode time, ms per generated token, cached tokens and peak memory; then a markdown
table, a JSON file and PNG plots against stream time, and how many times slower than
`streaming` the others are at 100 s and 200 s. With `--oom-probe`, a stock stream that has not
run out of memory within `--seconds` is probed further: its cache is filled to the length it
would have at later times and one chunk is run there, until one fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import platform
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.cli_args import add_engine_arguments, engine_overrides, number, parse_resolution, path_arg, setting
from core.config import EvictionMode, GenerationConfig, StreamConfig, resolve_config
from core.errors import ConfigError
from core.provenance import git_revision, package_version
from evals.runner import output_folder

if TYPE_CHECKING:  # torch, psutil, the engine and the baseline load in run (evals/registry.py says why)
    import torch

log = logging.getLogger(__name__)
STOCK = "stock"
POLICIES = (STOCK, *(m.value for m in EvictionMode))
FACTOR_AT_SECONDS = (100, 200)  # where the report compares each policy with `streaming`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="checkpoint folder or hub id")
    which.add_argument("--random-weights", choices=["7b", "tiny"], help="full-size (or tiny) random weights")
    parser.add_argument("--source", type=path_arg, help="video file to stream (default: synthetic frames)")
    parser.add_argument(
        "--seconds", type=number(1, 10**6, integer=True), default=60, help="stream length in seconds"
    )
    parser.add_argument("--resolution", default="1280x720", help="synthetic frame size WxH")
    parser.add_argument("--fps", type=setting(StreamConfig, "fps"), default=2.0)
    parser.add_argument(
        "--tokens",
        type=setting(GenerationConfig, "max_new_tokens"),
        default=20,
        help="tokens forced per chunk",
    )
    parser.add_argument(
        "--policies", default="streaming,recompute,none", help=f"comma-separated, from {', '.join(POLICIES)}"
    )
    parser.add_argument(
        "--oom-probe", action="store_true", help="find where stock generate runs out of GPU memory"
    )
    parser.add_argument(
        "--warmup",
        type=number(0, 10**6, integer=True),
        default=2,
        help="first chunks left out of the summary",
    )
    parser.add_argument(
        "--out", type=path_arg, default=None, help="output folder (default runs/efficiency-TIME)"
    )
    parser.add_argument(
        "--fuse-projections",
        choices=["auto", "on", "off"],
        help="[acceleration] fuse_projections: q/k/v and gate/up as one matmul each (core/fused.py)",
    )
    parser.add_argument(
        "--drift",
        action="store_true",
        help="instead of streaming: the numerical drift of each FP8 recipe against the weights as loaded, "
        "on one chunk's inputs (evals/drift.py; leave --weights at bf16)",
    )
    parser.add_argument(
        "--drift-steps", type=number(1, 1000, integer=True), default=20, help="greedy tokens compared"
    )
    # --config's [cache] sets the window sizes (each policy sets the mode), --fps and --tokens win over it.
    add_engine_arguments(parser, ("device", "dtype", "attn", "weights"))


def run(args: argparse.Namespace) -> int:
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        what = f"unknown policies {', '.join(unknown)}" if unknown else "--policies names no policy"
        raise ConfigError(f"{what}; use one or more of {', '.join(POLICIES)}, comma-separated")
    width, height = parse_resolution(args.resolution)
    overrides = engine_overrides(args)
    if args.fuse_projections:
        fuse = {"on": True, "off": False, "auto": None}[args.fuse_projections]
        overrides["acceleration"] = {**overrides.get("acceleration", {}), "fuse_projections": fuse}
    config = resolve_config(  # checked before torch loads
        args.config,
        {
            **overrides,
            "stream": {"fps": args.fps},
            "generation": {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens, "seed": 0},
        },
    )
    if args.drift and config.model.weights != "bf16":
        raise ConfigError(
            "--drift loads the weights as they are and measures every FP8 recipe against them; leave out --weights"
        )

    out = args.out or Path("runs") / f"efficiency-{time.strftime('%Y%m%d-%H%M%S')}"
    with output_folder(out, "efficiency"):
        return _measure(args, policies, config, (width, height), out)


def _measure(args: argparse.Namespace, policies: list[str], config, size: tuple[int, int], out: Path) -> int:
    import torch
    from rich.console import Console
    from rich.progress import Progress

    from core import fused
    from core.builders import build_random_model
    from core.engine import StreamingEngine
    from core.loading import model_from_config
    from evals.stock import StockStream, probe_out_of_memory

    width, height = size
    console = Console(stderr=True)

    started = time.perf_counter()
    if args.random_weights:
        m = config.model
        model = build_random_model(
            args.random_weights,
            device=m.device,
            dtype=m.dtype,
            attn=m.attn,
            acceleration=config.acceleration,
            weights=m.weights,
        )
    else:
        model = model_from_config(config)
    stream, generation = config.stream, config.generation
    frames = _frame_source(args, stream, width, height)
    resolution = f"{width}x{height}" if not args.source else str(args.source)
    if args.drift:
        from evals.drift import run_drift

        meta = {"model": model.name, "device": _device_name(model.device), "dtype": str(model.dtype)}
        table = run_drift(
            model, next(frames()), stream, {**meta, "resolution": resolution}, out, args.drift_steps
        )
        console.print(f"wrote {out}/drift.json and drift.md")
        print(table)
        return 0
    decided = model.accelerate(config.acceleration)  # what every engine below runs with
    load_s = time.perf_counter() - started

    meta = {
        "model": model.name,
        "device": _device_name(model.device),
        "dtype": str(model.dtype),
        "weights": _weights_name(config.model.weights),
        "fuse_projections": fused.wanted(config.acceleration.fuse_projections, model.device),
        "attention": model.attention_backend,
        "compiled": decided.compile,
        "acceleration": decided.describe(),
        **_decode_bytes(model),
        "resolution": resolution,
        "fps": args.fps,
        "tokens_per_chunk": args.tokens,
        "seconds": args.seconds,
        "model_load_s": round(load_s, 2),
        "versions": {
            "torch": torch.__version__,
            "transformers": package_version("transformers"),
            "python": platform.python_version(),
        },
        "git": git_revision(),
    }
    rows: list[dict] = []
    status: dict[str, str] = {}
    probes: list[dict] = []
    with Progress(console=console) as progress:
        for policy in policies:
            if policy == STOCK:
                session = StockStream(model, stream, generation, previous_text="")
            else:
                cache = dataclasses.replace(config.cache, mode=EvictionMode(policy))
                engine = StreamingEngine(
                    model, stream=stream, cache=cache, generation=generation, acceleration=config.acceleration
                )
                session = engine.start(previous_text="")
            task = progress.add_task(policy, total=args.seconds)
            status[policy] = "ok"
            for k, chunk_frames in zip(range(args.seconds), frames()):
                _reset_peak(model.device)
                try:
                    session.push(chunk_frames, k * stream.chunk_seconds, (k + 1) * stream.chunk_seconds)
                except torch.OutOfMemoryError:
                    status[policy] = f"out of memory at {k * stream.chunk_seconds:.0f} s"
                    break
                stats = session.last_stats
                rows.append(
                    {
                        "policy": policy,
                        "chunk": k,
                        **asdict(stats),
                        "total_ms": stats.total_ms,
                        "decode_ms_per_token": stats.decode_ms_per_token,
                        "decode_gbps": _decode_gbps(meta, stats.cached_tokens, stats.decode_ms_per_token),
                        "peak_memory_gib": _peak_gib(model.device),
                    }
                )
                progress.advance(task)
            if policy == STOCK and args.oom_probe and status[policy] == "ok":
                probes = probe_out_of_memory(
                    session, next(iter(frames())), start_seconds=args.seconds, console=console
                )
                status[policy] = oom_status(probes, args.seconds)
            session.close()
            del session
            if model.device.type == "cuda":
                torch.cuda.empty_cache()
            _write(out, meta, rows, policies, status, args.warmup, stream.chunk_seconds, probes)

    table = _write(out, meta, rows, policies, status, args.warmup, stream.chunk_seconds, probes)
    console.print(f"wrote {out}/results.json, table.md and latency_memory.png")
    print(table)
    return 0


def _write(
    out: Path,
    meta: dict,
    rows: list[dict],
    policies,
    status,
    warmup: int,
    chunk_seconds: float,
    probes: list[dict] = (),
) -> str:
    """Write results.json, table.md and the plot (after each policy too, so a cut-off run keeps its data)."""
    summary = _summarise(rows, policies, status, warmup, chunk_seconds)
    factors = _factors(rows, policies)
    (out / "results.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "summary": summary,
                "factors_vs_streaming": factors,
                "oom_probes": list(probes),
                "chunks": rows,
            },
            indent=1,
        )
    )
    table = _markdown(meta, summary, factors)
    (out / "table.md").write_text(table)
    _plot(rows, policies, out)
    return table


# -- pieces ----------------------------------------------------------------------------------------


def _frame_source(args, stream: StreamConfig, width: int, height: int):
    """A factory of per-chunk frame lists; synthetic frames cycle through a small pool (content does
    not change the cost, and a 1000-second HD stream would not fit in memory)."""
    if args.source:
        from core.media.chunker import chunks
        from core.media.sources import FileSource

        def from_file():
            with FileSource(args.source, fps=stream.fps) as source:
                for chunk in chunks(source, stream):
                    yield chunk.frames

        return from_file
    from core.synthetic import synthetic_frames

    n = stream.frames_per_chunk
    pool = list(itertools.islice(synthetic_frames(width, height, stream.fps, 10.0), 10 * n))
    pool = [np.ascontiguousarray(f) for f in pool]

    def synthetic():
        for k in itertools.count():
            start = (k * n) % len(pool)
            yield [pool[(start + i) % len(pool)] for i in range(n)]

    return synthetic


def _weights_name(weights: str) -> str:
    from core.quantize import recipe_of

    recipe = recipe_of(weights)
    return recipe.name if recipe else weights


def _decode_bytes(model) -> dict:
    """What one decode step must read, and the copy ceiling it is judged against (as gpt-fast prints
    it: bytes read per step over the step's time). The weights: the decoder layers, final norm and LM
    head as stored (FP8 ones as their float8 data and scales); the K/V: per cached token. The ceiling is
    measured on a GPU only (`python -m evals ceilings`' copy: read + write bandwidth)."""
    from core.quantize import weight_bytes

    language_model = model.model.model.language_model
    weights = sum(weight_bytes(m) for m in (language_model.layers, language_model.norm, model.model.lm_head))
    ceiling = None
    if model.device.type == "cuda":
        from evals.ceilings import measure

        ceiling = measure(model.device)["copy_gbps"]
    return {
        "decode_weight_bytes": weights,
        "kv_bytes_per_token": model.text.kv_bytes_per_token(model.dtype),
        "copy_ceiling_gbps": ceiling,
    }


def _decode_gbps(meta: dict, cached_tokens: int, ms_per_token: float) -> float | None:
    """Achieved bandwidth of one decode step: its weights and the cache it attends to, over its time."""
    if ms_per_token <= 0:
        return None
    read = meta["decode_weight_bytes"] + cached_tokens * meta["kv_bytes_per_token"]
    return read / (ms_per_token / 1000) / 1e9


def _reset_peak(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float:
    import psutil
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return psutil.Process().memory_info().rss / 2**30


def _summarise(rows, policies, status, warmup: int, chunk_seconds: float) -> list[dict]:
    summary = []
    for policy in policies:
        mine = [r for r in rows if r["policy"] == policy]
        steady = mine[warmup:] or mine
        if not steady:
            summary.append({"policy": policy, "status": status.get(policy, "no chunks")})
            continue

        def med(key, steady=steady):
            return statistics.median(r[key] for r in steady)

        summary.append(
            {
                "policy": policy,
                "chunks": len(mine),
                "vision_ms": med("vision_ms"),
                "evict_ms": med("evict_ms"),
                "prefill_ms": med("prefill_ms"),
                "decode_ms": med("decode_ms"),
                "decode_ms_per_token": med("decode_ms_per_token"),
                "decode_gbps": statistics.median(r["decode_gbps"] for r in steady if r.get("decode_gbps"))
                if any(r.get("decode_gbps") for r in steady)
                else None,
                "total_ms": med("total_ms"),
                "last_total_ms": mine[-1]["total_ms"],
                "cached_tokens_end": mine[-1]["cached_tokens"],
                "peak_memory_gib": max(r["peak_memory_gib"] for r in mine),
                "realtime_factor": chunk_seconds * 1000.0 / med("total_ms"),
                "status": status.get(policy, "ok"),
            }
        )
    return summary


def oom_status(probes: list[dict], streamed_seconds: float) -> str:
    """The stock policy's status line from its out-of-memory probes."""
    worked = [p["seconds"] for p in probes if p["ok"]] or [streamed_seconds]
    failed = [p["seconds"] for p in probes if not p["ok"]]
    if failed:
        return f"out of memory between {max(worked):.0f} and {min(failed):.0f} s (probed)"
    return f"no out of memory up to {max(worked):.0f} s (probed)"


def _factors(rows: list[dict], policies, window: float = 5.0) -> list[dict]:
    """How many times the streaming policy's chunk time each other policy takes, near given stream times.

    Medians over the chunks that end within `window` seconds of each time, so one slow chunk does
    not decide the figure.
    """

    def near(policy: str, t: float) -> float | None:
        times = [r["total_ms"] for r in rows if r["policy"] == policy and abs(r["t_end"] - t) <= window]
        return statistics.median(times) if times else None

    out = []
    for t in FACTOR_AT_SECONDS:
        base = near("streaming", t)
        if base is None:
            continue
        for policy in policies:
            other = near(policy, t) if policy != "streaming" else None
            if other is not None:
                out.append(
                    {
                        "policy": policy,
                        "seconds": t,
                        "ms": other,
                        "streaming_ms": base,
                        "factor": other / base,
                    }
                )
    return out


def _markdown(meta: dict, summary: list[dict], factors: list[dict] = ()) -> str:
    lines = [
        f"Model {meta['model']} on {meta['device']} ({meta['dtype']}, weights {meta.get('weights', 'bf16')}, "
        f"fused projections {'on' if meta.get('fuse_projections') else 'off'}, {meta['attention']}), {meta['resolution']} at "
        f"{meta['fps']:g} FPS, {meta['tokens_per_chunk']} tokens forced per chunk, {meta['seconds']} s stream. "
        "Medians over chunks after warm-up; ms per token counts the decode forwards.",
        "",
        "| policy | vision ms | evict ms | prefill ms | decode ms | ms/token | total ms | last chunk ms | cached tokens | peak GiB | x real time | decode GB/s (of copy ceiling) | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        if "vision_ms" not in s:
            lines.append(f"| {s['policy']} | | | | | | | | | | | | {s['status']} |")
            continue
        lines.append(
            f"| {s['policy']} | {s['vision_ms']:.1f} | {s['evict_ms']:.1f} | {s['prefill_ms']:.1f} | {s['decode_ms']:.1f} | "
            f"{s['decode_ms_per_token']:.2f} | {s['total_ms']:.1f} | {s['last_total_ms']:.1f} | {s['cached_tokens_end']:,} | "
            f"{s['peak_memory_gib']:.2f} | {s['realtime_factor']:.2f} | {_bandwidth(s.get('decode_gbps'), meta)} | {s['status']} |"
        )
    if factors:
        lines += [
            "",
            "| policy | at stream time | ms per chunk | streaming ms | x streaming |",
            "|---|---|---|---|---|",
        ]
        for f in factors:
            lines.append(
                f"| {f['policy']} | {f['seconds']} s | {f['ms']:.1f} | {f['streaming_ms']:.1f} | {f['factor']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def _bandwidth(gbps: float | None, meta: dict) -> str:
    if gbps is None:
        return ""
    ceiling = meta.get("copy_ceiling_gbps")
    return f"{gbps:,.0f} ({gbps / ceiling:.0%})" if ceiling else f"{gbps:,.0f}"


def _plot(rows: list[dict], policies: list[str], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed; skipping plots (pip install 'streamvlm[eval]')")
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for policy in policies:
        mine = [r for r in rows if r["policy"] == policy]
        if not mine:
            continue
        t = [r["t_end"] for r in mine]
        axes[0].plot(t, [r["total_ms"] for r in mine], label=policy)
        axes[1].plot(t, [r["peak_memory_gib"] for r in mine], label=policy)
    axes[0].set(xlabel="stream time (s)", ylabel="ms per 1-s chunk", title="latency per chunk")
    axes[1].set(xlabel="stream time (s)", ylabel="peak memory (GiB)", title="memory")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency_memory.png", dpi=120)
    plt.close(fig)


def _device_name(device: torch.device) -> str:
    import psutil
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {psutil.cpu_count()} threads)"
