"""Profile one steady-state chunk of the engine on a GPU (full-size random 7B weights).

    python evals/scripts/profile_chunk.py --warm 20 --out DIR [--weights fp8-dynamic]

Streams `--warm` HD chunks to warm up (compilation and CUDA graph capture happen there), then runs
one more under torch.profiler and writes the top operators by CUDA and CPU time, and, per phase
of the chunk, its wall time against the time the GPU was busy (the union of kernel intervals; a
phase whose busy time is well under its wall time is waiting on the host), the sum of its kernels'
times, and its 15 costliest kernels.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

from torch.profiler import ProfilerActivity, profile, record_function

from core.builders import build_random_model
from core.cli_args import number
from core.config import WEIGHT_FORMATS, GenerationConfig
from core.engine import StreamingEngine
from core.synthetic import synthetic_frames

PHASES = ("streamvlm.vision", "streamvlm.evict", "streamvlm.prefill", "streamvlm.decode")


def busy_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warm", type=number(1, 10_000, integer=True), default=20)
    parser.add_argument("--out", type=Path, default=Path("runs/profile"))
    parser.add_argument(
        "--weights", choices=WEIGHT_FORMATS, default="bf16", help="the language model's linears"
    )
    parser.add_argument("--preset", default="7b", help="random weights: 7b, or tiny for a smoke run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = build_random_model(args.preset, weights=args.weights)
    engine = StreamingEngine(model, generation=GenerationConfig(max_new_tokens=20, min_new_tokens=20, seed=0))
    session = engine.start()
    frames = list(itertools.islice(synthetic_frames(1280, 720, 2.0, 10.0), 20))
    for k in range(args.warm):
        session.push(frames[(2 * k) % 20 : (2 * k) % 20 + 2], k, k + 1)
    print("warm:", session.last_stats)
    k = args.warm
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with record_function("chunk"):
            session.push(frames[:2], k, k + 1)
    print("profiled:", session.last_stats)
    lines = []
    for key in ("cuda_time_total", "cpu_time_total"):
        table = prof.key_averages().table(sort_by=key, row_limit=30, max_name_column_width=60)
        lines.append(table)
        print(table)

    events = prof.events()
    # Device-side events are kernels, copies and memsets, and also the device image of each
    # record_function range (a "gpu_user_annotation" spanning its kernels): those would make every
    # phase look busy from start to end, so they are left out by name.
    annotations = {*PHASES, "chunk", "streamvlm.evict+inputs"}
    device_events = [
        e
        for e in events
        if e.device_type.name == "CUDA"
        and e.time_range.end > e.time_range.start
        and e.name not in annotations
        and not e.name.startswith("streamvlm.")
    ]
    kernels = [(e.time_range.start, e.time_range.end) for e in device_events]

    def first(name):
        return next(e.time_range for e in events if e.name == name and e.device_type.name == "CPU")

    # A phase's window runs from its start to the next phase's start: each phase ends with a device
    # sync (core.engine.Stopwatch), so its kernels all fall inside, though after its host range.
    starts = [(name, first(name).start) for name in PHASES]
    bounds = starts[1:] + [("end", first("chunk").end)]
    phases = {}
    for (name, start), (_, end) in zip(starts, bounds):
        inside = [(max(a, start), min(b, end)) for a, b in kernels if b > start and a < end]
        by_name: dict[str, float] = {}
        for e in device_events:
            if e.time_range.end > start and e.time_range.start < end:
                by_name[e.name] = by_name.get(e.name, 0.0) + (e.time_range.end - e.time_range.start) / 1000
        top = sorted(by_name.items(), key=lambda kv: -kv[1])[:15]
        phases[name] = {
            "wall_ms": (end - start) / 1000,
            "gpu_busy_ms": busy_us(inside) / 1000,
            "kernel_sum_ms": sum(b - a for a, b in inside) / 1000,
            "kernels": len(inside),
            "top_kernels_ms": {k[:90]: round(v, 3) for k, v in top},
        }
    summary = {"stats": str(session.last_stats), "phases": phases}
    print(json.dumps(summary, indent=1))
    (args.out / "profile_phases.json").write_text(json.dumps(summary, indent=1))
    (args.out / "profile_tables.txt").write_text("\n\n".join(lines))


if __name__ == "__main__":
    main()
