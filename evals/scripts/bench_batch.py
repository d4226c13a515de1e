"""Many sessions on one GPU through the scheduler, against one session without it; random 7B weights.

    python evals/scripts/bench_batch.py --sessions 1,4,8,16 --chunks 10 --out DIR

For each N, N sessions (each its own thread, own HD noise frames, 20 tokens forced per chunk) push
`--chunks` one-second chunks as fast as they can through one engine with a pool of N cache slots
and the scheduler (batched prefills and decode steps); one session without the scheduler (the
static-graph path) runs for reference. Reports per-chunk engine time and its split (median over
sessions and chunks after each one's first two: graph captures), chunks per prefill forward, rows
per decode step, and stream-seconds of video per second of wall time. Then checks that
batched and solo sessions agree on their greedy tokens for the first 5 chunks (bf16): by default
against the single-session path without the scheduler, and in batch-invariant mode
(`acceleration.batch_invariant`) against a session alone on the scheduler (the path of `core run`),
where they must agree exactly. `--sessions ""` runs the agreement checks only.
Writes DIR/batch.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from core.builders import build_random_model
from core.config import AccelerationConfig, CachePolicy, GenerationConfig, StreamConfig
from core.engine import StreamingEngine

FORCED = GenerationConfig(max_new_tokens=20, min_new_tokens=20, seed=0)
GREEDY = GenerationConfig(temperature=0.0, max_new_tokens=20)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


SIZE = (720, 1280)  # height, width
WARM_CHUNKS = 2  # each session's first chunks: compilation and graph captures of new batch sizes


def frames(seed: int, chunks: int) -> list[list[np.ndarray]]:
    size = SIZE
    rng = np.random.default_rng(seed)
    return [[rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(2)] for _ in range(chunks)]


def run(
    model,
    sessions: int,
    chunks: int,
    batched: bool,
    generation=FORCED,
    first: int = 0,
    invariant: bool = False,
) -> dict:
    """Streams first .. first+sessions-1 (each one's frames and previous text follow its number)."""
    engine = StreamingEngine(
        model,
        stream=StreamConfig(),
        cache=CachePolicy(),
        generation=generation,
        sessions=sessions,
        batched=batched,
        acceleration=AccelerationConfig(batch_invariant=True) if invariant else None,
    )
    inputs = [frames(first + s, chunks) for s in range(sessions)]
    times: list[list[float]] = [[] for _ in range(sessions)]
    tokens: list[list[list[int]]] = [[] for _ in range(sessions)]
    phases: list[dict] = []  # each chunk's split (after each session's warm-up chunks)
    # Every session's warm-up chunks (compilation, graph captures of new batch sizes) end before the
    # clock and the model thread's counters start: warmed, then timed.
    warmed, timed = threading.Barrier(sessions + 1), threading.Barrier(sessions + 1)

    def worker(s: int) -> None:
        with engine.start(previous_text=f"Stream {first + s}.", seed=first + s) as session:
            for k, chunk in enumerate(inputs[s]):
                if k == WARM_CHUNKS:
                    warmed.wait()
                    timed.wait()
                started = time.perf_counter()
                session.push(chunk, float(k), float(k + 1))
                times[s].append(time.perf_counter() - started)
                tokens[s].append(session.cache.token_ids()[-20:])
                st = session.last_stats
                if k >= WARM_CHUNKS:
                    phases.append(
                        {
                            "queue": st.queue_ms,
                            "vision": st.vision_ms,
                            "prefill": st.prefill_ms,
                            "decode": st.decode_ms,
                        }
                    )

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(sessions)]
    for thread in threads:
        thread.start()
    warmed.wait()
    _sync()
    scheduler = engine.scheduler
    if scheduler:  # count the timed chunks only
        scheduler.prefill_batches = scheduler.prefill_jobs = 0
        scheduler.decode.batches = scheduler.decode.rows = 0
        scheduler.busy_ms = dict.fromkeys(scheduler.busy_ms, 0.0)
    started = time.perf_counter()
    timed.wait()
    for thread in threads:
        thread.join()
    _sync()
    wall = time.perf_counter() - started
    after_first = [t for per in times for t in per[WARM_CHUNKS:]]
    timed_chunks = sessions * (chunks - WARM_CHUNKS)
    scheduler = engine.scheduler
    decode = scheduler.decode if scheduler else None
    if scheduler:
        scheduler.close()
    return {
        "sessions": sessions,
        "batched": batched,
        "chunk_ms_median": round(1000 * statistics.median(after_first), 1),
        "chunk_ms_p90": round(1000 * float(np.percentile(after_first, 90)), 1),
        "rows_per_batch": round(decode.rows / decode.batches, 2) if decode and decode.batches else 1.0,
        "chunks_per_prefill": round(scheduler.prefill_jobs / scheduler.prefill_batches, 2)
        if scheduler and scheduler.prefill_batches
        else 1.0,
        **{
            f"{name}_ms_median": round(statistics.median(p[name] for p in phases), 1)
            for name in ("queue", "vision", "prefill", "decode")
        },
        "stream_s_per_s": round(timed_chunks / wall, 2),
        "step_ms_mean": round(scheduler.busy_ms["decode"] / decode.batches, 2)
        if decode and decode.batches
        else None,
        "model_thread_ms": {k: round(v) for k, v in scheduler.busy_ms.items()} if scheduler else None,
        "wall_s": round(wall, 1),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if torch.cuda.is_available()
        else None,
        "tokens": tokens,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sessions", default="1,4,8,16", help='comma-separated counts; "" for the agreement only'
    )
    parser.add_argument("--chunks", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-batch"))
    parser.add_argument("--preset", default="7b", help="random weights: 7b, or tiny for a CPU smoke run")
    parser.add_argument("--size", default="1280x720", help="frame size WxH")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = build_random_model(args.preset, dtype="bfloat16" if torch.cuda.is_available() else "float32")
    global SIZE
    SIZE = tuple(int(x) for x in reversed(args.size.split("x")))
    run(model, 1, 3, batched=False)  # warm-up: compilation and graph capture
    rows = []
    if args.sessions:
        rows.append(run(model, 1, args.chunks, batched=False))
        for n in (int(x) for x in args.sessions.split(",")):
            rows.append(run(model, n, args.chunks, batched=True))
    # Agreement: 4 batched greedy sessions against each alone, first 5 chunks; how many of the 5 end
    # with the same 20 cached tokens.
    together = run(model, 4, 5, batched=True, generation=GREEDY)["tokens"]
    solo = [run(model, 1, 5, batched=False, generation=GREEDY, first=s)["tokens"][0] for s in range(4)]
    agree = {f"session{s}": sum(a == b for a, b in zip(together[s], solo[s], strict=True)) for s in range(4)}
    together = run(model, 4, 5, batched=True, generation=GREEDY, invariant=True)["tokens"]
    solo = [
        run(model, 1, 5, batched=True, generation=GREEDY, first=s, invariant=True)["tokens"][0]
        for s in range(4)
    ]
    agree_invariant = {
        f"session{s}": sum(a == b for a, b in zip(together[s], solo[s], strict=True)) for s in range(4)
    }
    for row in rows:
        row.pop("tokens")
    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "rows": rows,
        "agreement": agree,
        "agreement_batch_invariant": agree_invariant,
    }
    (args.out / "batch.json").write_text(json.dumps(result, indent=1))
    print(
        "| sessions | path | chunk ms (median) | p90 | queue | vision | prefill | decode | chunks per prefill "
        "| rows per step | step ms | stream-s per s | peak GiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        path = "scheduler" if r["batched"] else "single session (no scheduler)"
        print(
            f"| {r['sessions']} | {path} | {r['chunk_ms_median']} | {r['chunk_ms_p90']} | {r['queue_ms_median']} "
            f"| {r['vision_ms_median']} | {r['prefill_ms_median']} | {r['decode_ms_median']} "
            f"| {r['chunks_per_prefill']} | {r['rows_per_batch']} | {r['step_ms_mean']} | {r['stream_s_per_s']} "
            f"| {r['peak_gib']} |"
        )
        if r["model_thread_ms"]:
            print(f"  model thread (ms over the run): {r['model_thread_ms']}, wall {r['wall_s']} s")
    from core import attention

    print(
        "ragged prefill attention:",
        {str(k): "flash varlen" if v else "per-session SDPA" for k, v in attention._VARLEN.items()},
    )
    print("agreement (default, against no scheduler):", json.dumps(agree))
    print("agreement (batch-invariant, against alone on the scheduler):", json.dumps(agree_invariant))
    return 0


if __name__ == "__main__":
    sys.exit(main())
