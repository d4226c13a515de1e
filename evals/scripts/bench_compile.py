"""Where prefill and vision time goes, and what torch.compile's fusion buys, on one GPU.

    python evals/scripts/bench_compile.py --warm 24 --out DIR

Full-size random Qwen2.5-VL-7B weights, an HD stream warmed to a ~13k-token cache, then:
1. kernel tables (torch.profiler) of one prefill and one eager vision pass;
2. the eviction's key move: per-layer PyTorch rotation (the old path) vs one gather and the fused
   Triton rotation over all layers;
3. baseline times: decode step (CUDA graph), prefill, vision (eager and graph);
4. the same after `torch.compile` of the language model's norms and MLPs, and of the vision blocks,
   with the compile times;
Each section is independent: a failure is printed and the next one runs. Results: DIR/compile.json
and DIR/kernels.txt. (docs/results/h100-fused/compile_kernels.txt predates the padded vision MLP,
which a GPU model now gets at load: its vision tables show the unaligned matmuls.)
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
import traceback
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from core.builders import build_random_model
from core.cli_args import number
from core.config import AccelerationConfig
from core.decode_step import StaticDecodeStep
from core.engine import StreamingEngine
from core.frames import video_input
from core.kernels import rotate_into
from core.positions import rotate, rotation, text_positions
from core.synthetic import synthetic_frames
from core.vision import VisionRunner
from evals.timing import median_ms


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warm", type=number(1, 10_000, integer=True), default=24)
    parser.add_argument("--out", type=Path, default=Path("runs/compile"))
    parser.add_argument("--preset", default="7b", help="random-weights preset (tiny: a CPU smoke run)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, float | str] = {}
    tables: list[str] = []

    def save():
        (args.out / "compile.json").write_text(json.dumps(results, indent=1))
        (args.out / "kernels.txt").write_text("\n\n".join(tables))

    model = build_random_model(args.preset, acceleration=AccelerationConfig(compile=False))
    device = model.device

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn, repeats=20):
        return median_ms(fn, device, repeats=repeats)

    session = StreamingEngine(model).start()
    frames = list(itertools.islice(synthetic_frames(1280, 720, 2.0, 10.0), 20))
    for k in range(args.warm):
        session.push(frames[(2 * k) % 20 : (2 * k) % 20 + 2], k, k + 1)
    cache = session.cache
    length = cache.length
    results["cached_tokens"] = length
    print("warm:", session.last_stats, flush=True)
    hf = model.model
    video = video_input(frames[:2], session.engine.stream, model.vision, model.device)
    n = 750
    embeds = torch.randn(n, model.text.hidden_size, device=model.device, dtype=model.dtype) * 0.02
    positions = text_positions(cache.cursor, n, model.device)
    cache.ensure_capacity(n + 64)
    token = torch.tensor(5, device=model.device)

    def rollback():
        for layer in cache.layers:
            layer.length = length

    def prefill():
        model.forward(embeds, positions, cache)
        rollback()

    def decode_graph_ms() -> float:
        step = StaticDecodeStep(model, cache, use_graph=device.type == "cuda")

        def run():
            step(token, cache.cursor)
            rollback()

        return timed(run, repeats=50)

    def section(name, fn):
        started = time.perf_counter()
        try:
            fn()
        except Exception:  # a failed variant is a result too; keep measuring the others
            results[f"{name}_error"] = traceback.format_exc(limit=3)[-1500:]
            print(f"{name} failed:\n{results[f'{name}_error']}", flush=True)
        results[f"{name}_section_s"] = round(time.perf_counter() - started, 1)
        print(name, json.dumps({k: v for k, v in results.items() if k.startswith(name)}), flush=True)
        save()

    def kernel_table(name: str, fn) -> None:
        """Profile one run of `fn` (after one warm run); keep its kernel table and kernel totals."""
        fn()
        sync()
        kind = ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU
        with profile(activities=[kind]) as prof:
            fn()
            sync()
        averages = prof.key_averages()
        tables.append(
            f"== {name} ==\n{averages.table(sort_by='cuda_time_total', row_limit=25, max_name_column_width=70)}"
        )
        events = [e for e in averages if e.device_type.name == kind.name]
        results[f"kernels_{name}_launches"] = sum(e.count for e in events)
        results[f"kernels_{name}_gpu_ms"] = sum(e.self_device_time_total for e in events) / 1000
        print(tables[-1], flush=True)

    def kernel_tables():
        kernel_table("prefill", prefill)
        eager = VisionRunner(hf, use_graph=False)
        kernel_table("vision_eager", lambda: eager(video.pixel_values, video.grid_thw))

    def eviction():
        moved = length - 800  # a steady-state eviction moves all but the sink and the first chunk
        index = torch.arange(800, length, device=model.device)
        shifts = torch.full((moved,), -740.0, device=model.device)
        cos, sin = rotation(shifts, model.inv_freq)

        def per_layer():
            for layer in cache.layers:
                keys = layer.keys.index_select(2, index)
                values = layer.values.index_select(2, index)
                layer.keys[:, :, :moved] = rotate(keys, cos, sin)
                layer.values[:, :, :moved] = values

        def fused():
            keys = cache.key_buffer.index_select(3, index)
            cache.value_buffer[:, :, :, :moved] = cache.value_buffer.index_select(3, index)
            rotate_into(cache.key_buffer[:, :, :, :moved], keys, cos, sin)

        results["evict_moved_tokens"] = moved
        results["evict_per_layer_ms"] = timed(per_layer, repeats=10)
        results["evict_fused_ms"] = timed(fused, repeats=10)
        results["evict_floor_ms"] = 4 * moved * model.text.kv_bytes_per_token(model.dtype) / 2 / 3.0e12 * 1e3

    def baseline():
        results["decode_graph_ms"] = decode_graph_ms()
        results["prefill_ms"] = timed(prefill, repeats=10)
        eager = VisionRunner(hf, use_graph=False)
        results["vision_eager_ms"] = timed(lambda: eager(video.pixel_values, video.grid_thw))
        graph = VisionRunner(hf, use_graph=device.type == "cuda")
        results["vision_graph_ms"] = timed(lambda: graph(video.pixel_values, video.grid_thw))

    def compile_lm():
        lm = hf.model.language_model
        for layer in lm.layers:
            for part in (layer.input_layernorm, layer.post_attention_layernorm, layer.mlp):
                part.compile()
        lm.norm.compile()
        started = time.perf_counter()
        prefill()
        prefill_positions = text_positions(cache.cursor, n - 3, model.device)
        model.forward(embeds[: n - 3], prefill_positions, cache)  # a second length: dynamic shapes
        rollback()
        results["lm_compile_prefill_first_s"] = time.perf_counter() - started
        started = time.perf_counter()
        results["decode_graph_lm_compiled_ms"] = decode_graph_ms()
        results["lm_compile_decode_first_s"] = time.perf_counter() - started
        results["prefill_lm_compiled_ms"] = timed(prefill, repeats=10)

    def compile_vision():
        visual = hf.model.visual
        for block in visual.blocks:
            block.compile()
        visual.merger.compile()
        eager = VisionRunner(hf, use_graph=False)
        started = time.perf_counter()
        eager(video.pixel_values, video.grid_thw)
        sync()
        results["vision_compile_first_s"] = time.perf_counter() - started
        results["vision_eager_compiled_ms"] = timed(lambda: eager(video.pixel_values, video.grid_thw))
        graph = VisionRunner(hf, use_graph=device.type == "cuda")
        results["vision_graph_compiled_ms"] = timed(lambda: graph(video.pixel_values, video.grid_thw))

    def compiled_tables():
        step = StaticDecodeStep(model, cache, use_graph=device.type == "cuda")
        step(token, cache.cursor)
        rollback()
        graph = VisionRunner(hf, use_graph=device.type == "cuda")
        graph(video.pixel_values, video.grid_thw)
        kernel_table("decode_compiled", lambda: (step(token, cache.cursor), rollback()))
        kernel_table("prefill_compiled", prefill)
        kernel_table("vision_graph_compiled", lambda: graph(video.pixel_values, video.grid_thw))

    torch._dynamo.config.cache_size_limit = 64
    section("kernels", kernel_tables)
    section("evict", eviction)
    section("base", baseline)
    section("lm", compile_lm)
    section("vision", compile_vision)
    section("tables", compiled_tables)
    print(json.dumps(results, indent=1), flush=True)


if __name__ == "__main__":
    main()
