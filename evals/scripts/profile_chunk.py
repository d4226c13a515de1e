"""Profile one steady-state chunk of the engine on a GPU (full-size random 7B weights).

    python evals/scripts/profile_chunk.py --warm 20 --out DIR

Streams `--warm` HD chunks to warm up, then runs one more under torch.profiler and writes the
top operators by CUDA and CPU time (what the phases spend, for docs/performance.md).
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from torch.profiler import ProfilerActivity, profile, record_function

from core.config import GenerationConfig
from core.engine import StreamingEngine
from core.model import build_random_model
from core.synthetic import synthetic_frames


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warm", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("runs/profile"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = build_random_model("7b")
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
        table = prof.key_averages().table(sort_by=key, row_limit=30)
        lines.append(table)
        print(table)
    (args.out / "profile_tables.txt").write_text("\n\n".join(lines))


if __name__ == "__main__":
    main()
