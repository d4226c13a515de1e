"""Time each phase of a steady-state chunk on a GPU, with the alternatives side by side.

    python evals/scripts/bench_phases.py --warm 24 --out DIR

Full-size random Qwen2.5-VL-7B weights, an HD stream warmed to a ~12k-token cache, then:
- decode: one token step, eager dynamic path vs the static step eagerly vs CUDA graph with each
  attention kernel choice;
- vision: stock `get_video_features` vs the fast path, eager and graph;
- prefill: one chunk's ~750 new tokens against the cache, stock GQA handling vs forced GQA;
plus the weight-read floor. Each timing is the median of repeats after warm-up (device events).
The cache is rolled back after every measurement, so all variants see the same state.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

import torch

from core.attention import CAUSAL_PREFILL
from core.builders import build_random_model
from core.cli_args import number
from core.decode_step import ATTENTION_BACKENDS, StaticDecodeStep
from core.engine import StreamingEngine
from core.frames import video_input
from core.synthetic import synthetic_frames
from core.vision import VisionRunner
from evals.timing import median_ms


def timed(fn, repeats: int = 20, warmup: int = 3) -> float:
    return median_ms(fn, "cuda", repeats=repeats, warmup=warmup)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warm", type=number(1, 10_000, integer=True), default=24)
    parser.add_argument("--out", type=Path, default=Path("runs/phases"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, float] = {}

    model = build_random_model("7b")
    engine = StreamingEngine(model)
    session = engine.start()
    frames = list(itertools.islice(synthetic_frames(1280, 720, 2.0, 10.0), 20))
    for k in range(args.warm):
        session.push(frames[(2 * k) % 20 : (2 * k) % 20 + 2], k, k + 1)
    cache = session.cache
    results["cached_tokens"] = cache.length
    print("warm:", session.last_stats, flush=True)

    lm_bytes = sum(p.numel() * p.element_size() for p in model.model.model.language_model.parameters())
    lm_bytes += model.model.lm_head.weight.numel() * model.model.lm_head.weight.element_size()
    kv_bytes = cache.length * model.text.kv_bytes_per_token(model.dtype)
    results["weights_gb"] = lm_bytes / 1e9
    results["kv_gb"] = kv_bytes / 1e9

    def rollback(length: int):
        for layer in cache.layers:
            layer.length = length

    # -- decode ----------------------------------------------------------------------------
    length = cache.length
    token = torch.tensor(5, device=model.device)
    position = cache.cursor
    cache.ensure_capacity(64)

    def dynamic_step():
        from core.positions import text_positions

        model.forward(model.embed(token.view(1)), text_positions(position, 1, model.device), cache)
        rollback(length)

    results["decode_dynamic_eager_ms"] = timed(dynamic_step)
    for name in ATTENTION_BACKENDS:
        for graph in (False, True):
            step = StaticDecodeStep(model, cache, use_graph=graph, attention=name)

            def run_step(step=step):
                step(token, position)
                rollback(length)

            try:
                results[f"decode_static_{'graph' if graph else 'eager'}_{name}_ms"] = timed(run_step)
            except RuntimeError as exc:
                results[f"decode_static_{'graph' if graph else 'eager'}_{name}_ms"] = float("nan")
                print("decode", name, graph, "failed:", exc, flush=True)
            rollback(length)
    print(json.dumps(results, indent=1), flush=True)

    # -- vision ------------------------------------------------------------------------------
    results["frames_to_patches_ms"] = timed(
        lambda: video_input(frames[:2], engine.stream, model.vision, model.device)
    )
    video = video_input(frames[:2], engine.stream, model.vision, model.device)
    hf = model.model
    fast = hf.config.vision_config._attn_implementation
    hf.set_attn_implementation({"vision_config": "sdpa"})
    results["vision_stock_ms"] = timed(
        lambda: hf.model.get_video_features(
            pixel_values_videos=video.pixel_values, video_grid_thw=video.grid_thw.to(model.device)
        ),
        repeats=10,
    )
    hf.set_attn_implementation({"vision_config": fast})
    eager = VisionRunner(hf, use_graph=False)
    results["vision_fast_eager_ms"] = timed(lambda: eager(video.pixel_values, video.grid_thw))
    graph = VisionRunner(hf, use_graph=True)
    results["vision_fast_graph_ms"] = timed(lambda: graph(video.pixel_values, video.grid_thw))
    print(json.dumps(results, indent=1), flush=True)

    # -- prefill -----------------------------------------------------------------------------
    from core.positions import text_positions

    n = 750
    embeds = torch.randn(n, model.text.hidden_size, device=model.device, dtype=model.dtype) * 0.02
    positions = text_positions(cache.cursor, n, model.device)
    cache.ensure_capacity(n)

    def prefill():
        model.forward(embeds, positions, cache)
        rollback(length)

    for impl in (CAUSAL_PREFILL, "sdpa"):
        model.model.set_attn_implementation({"text_config": impl})
        key = f"prefill_{impl}"
        results[key + "_ms"] = timed(prefill, repeats=5)
        firsts = []  # key lengths not seen before: what a chunk pays where kernels are planned per shape
        for k in range(1, 4):
            rollback(length - 7 * k)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            model.forward(embeds, positions, cache)
            end.record()
            end.synchronize()
            firsts.append(start.elapsed_time(end))
            rollback(length)
        results[key + "_new_shape_ms"] = statistics.median(firsts)
    model.model.set_attn_implementation({"text_config": CAUSAL_PREFILL})

    # -- what one graph decode step spends, kernel by kernel ----------------------------------
    from torch.profiler import ProfilerActivity, profile

    for name in ("matmul", "auto"):
        step = StaticDecodeStep(model, cache, use_graph=True, attention=name)
        step(token, position)
        rollback(length)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step(token, position)
                rollback(length)
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=15)
        (args.out / f"decode_kernels_{name}.txt").write_text(table)
        print(name, table, flush=True)

    results["decode_floor_ms"] = (lm_bytes + kv_bytes) / 3.0e12 * 1000
    (args.out / "phases.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1), flush=True)


if __name__ == "__main__":
    main()
