"""Where the first chunks' time goes while the model compiles in the background (core/warmup.py).

One process, random 7B weights on the GPU, 1280x720 at 2 FPS, 20 tokens forced:
1. an engine with compilation and CUDA graphs off: the eager path's own first-call costs, chunk by chunk;
2. an engine on the same model with everything on (compiling in the background): each chunk's wall
   time, its split, whether it ran compiled, and when the compiling thread finished; Dynamo's graph
   counters before and after the switch (a recompilation at the switch would show there).
Prints one table per engine. Usage: python3 evals/scripts/warmup_probe.py [--chunks N]
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch

from core.builders import build_random_model
from core.config import AccelerationConfig, GenerationConfig, StreamConfig
from core.engine import StreamingEngine
from core.synthetic import synthetic_frames


def stream(engine: StreamingEngine, frames: list[np.ndarray], chunks: int, started: float) -> None:
    n = engine.stream.frames_per_chunk
    warmup = engine.model.warmup
    print(f"{'chunk':>5} {'wall s':>7} {'vision':>7} {'prefill':>8} {'decode':>7} compiled  t(s)  warm-up")
    with engine.start() as session:
        for k in range(chunks):
            pushed = time.perf_counter()
            session.push([frames[(k * n + i) % len(frames)] for i in range(n)], k, k + 1)
            s = session.last_stats
            state = (
                "-"
                if warmup is None
                else (f"done {warmup.seconds:.1f}s" if warmup.finished.is_set() else "running")
            )
            print(
                f"{k:>5} {time.perf_counter() - pushed:7.3f} {s.vision_ms:7.1f} {s.prefill_ms:8.1f} "
                f"{s.decode_ms:7.1f} {s.compiled!s:>8} {time.perf_counter() - started:5.1f}  {state}"
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=12)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    started = time.perf_counter()
    model = build_random_model("7b", device="cuda")
    print(f"built in {time.perf_counter() - started:.1f} s")
    stream_config = StreamConfig()
    frames = list(synthetic_frames(1280, 720, stream_config.fps, 4 * stream_config.chunk_seconds))
    generation = GenerationConfig(max_new_tokens=20, min_new_tokens=20, seed=0)

    print("\n== eager: compile and graphs off ==")
    eager = AccelerationConfig(compile=False, cuda_graphs=False, static_decode=False, overlap=False)
    stream(
        StreamingEngine(model, generation=generation, acceleration=eager, sessions=1, batched=True),
        frames,
        4,
        time.perf_counter(),
    )

    print("\n== everything on, compiling in the background ==")
    from torch._dynamo.utils import counters

    t0 = time.perf_counter()
    engine = StreamingEngine(model, generation=generation, sessions=1, batched=True)
    stream(engine, frames, args.chunks, t0)
    print("dynamo:", dict(counters["stats"]), "recompiles:", dict(counters.get("recompiles", {})))
    print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
