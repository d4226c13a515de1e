"""Training-step benchmark: real optimizer steps of the training loop on random full-size weights.

    python -m trainer.bench_step                       # one GPU: the 7B with as many layers as fit
    python -m trainer.bench_step --layers 28 --offload # all layers, sharded state in host memory
    torchrun --nproc-per-node 8 -m trainer.bench_step --layers 28   # the published 8-GPU setup
    python -m trainer.bench_step --tiny                # CPU smoke test of the same code

Builds Qwen2.5-VL-7B from `core.builders.qwen25_vl_7b_config` with random weights (no download),
a synthetic sample shaped like the published ones (24 s of 1280x720 at 2 FPS: 24 chunks of 720
vision tokens, plus text: about 19k tokens), and runs `trainer.train.train_step` (FSDP2, bf16
compute over float32 master weights, activation checkpointing, chunked loss, AdamW). Prints
tokens/s, step time and peak memory; writes JSON to $OUT/train_step.json when $OUT is set.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import time
from pathlib import Path

import torch

from core.cli_args import number
from trainer import distributed
from trainer import train as T
from trainer.config import DistSettings, ModelSettings, PrecisionSettings, TrainConfig, load_train_config
from trainer.data.sample import IGNORE_INDEX, TrainSample

log = logging.getLogger("trainer.bench")

GIB = 2**30


def synthetic_sample(
    spec, *, seconds: int, width: int, height: int, prefix_tokens: int, reply_tokens: int, seed: int = 0
) -> TrainSample:
    """A window as the data side builds it: a text prefix, then per second a user turn with one
    2-frame video chunk and a labelled reply. Token ids are random text ids; positions contiguous."""
    from qwen_vl_utils import smart_resize

    g = torch.Generator().manual_seed(seed)
    vision = spec.vision
    h, w = smart_resize(
        height, width, factor=vision.factor, min_pixels=100 * 28 * 28, max_pixels=768 * 28 * 28
    )
    grid = (1, h // vision.patch_size, w // vision.patch_size)  # one temporal group of 2 frames
    rows, cols = grid[1] // vision.merge_size, grid[2] // vision.merge_size
    specials = spec.special
    ids: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    positions: list[torch.Tensor] = []
    cursor = 0

    def text(n: int, labelled: bool) -> None:
        nonlocal cursor
        tokens = torch.randint(0, min(specials.im_end, specials.endoftext, 600), (n,), generator=g)
        ids.append(tokens)
        labels.append(tokens if labelled else torch.full((n,), IGNORE_INDEX))
        positions.append(torch.arange(cursor, cursor + n).expand(3, n))
        cursor += n

    text(prefix_tokens, False)
    for _ in range(seconds):
        text(12, False)  # <|im_start|>user\nTime=a.a-b.bs <|vision_start|>
        ids.append(torch.full((rows * cols,), specials.video_pad))
        labels.append(torch.full((rows * cols,), IGNORE_INDEX))
        r, s = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        positions.append(torch.stack([torch.zeros_like(r), r, s]).reshape(3, -1) + cursor)
        cursor += max(rows, cols)
        text(6, False)  # <|vision_end|><|im_end|>\n<|im_start|>assistant\n\n
        text(reply_tokens, True)
    patches = seconds * grid[1] * grid[2]
    width_px = 3 * vision.temporal_patch_size * vision.patch_size**2
    return TrainSample(
        input_ids=torch.cat(ids),
        labels=torch.cat(labels),
        position_ids=torch.cat(positions, dim=1),
        pixel_values_videos=torch.randn(patches, width_px, generator=g),
        video_grid_thw=torch.tensor([grid] * seconds),
        source=f"synthetic:{seconds}s {width}x{height}",
    )


def layers_that_fit(total_bytes: int, world: int, tokens: int, offload: bool) -> int:
    """Decoder layers whose sharded fp32 state (weights, grads, 2 Adam moments: 16 B/param) fits."""
    layer_params, head_params, vision_params, hidden = 233_000_000, 2 * 545_000_000, 670_000_000, 3584
    state = 0 if offload else 16 / world
    fixed = head_params * state + vision_params * 2 + 14 * GIB  # + recompute, logits chunk, vision pass
    per_layer = layer_params * state + tokens * hidden * 2 + layer_params * 2 / world  # + checkpointed input
    return max(1, min(28, int((0.92 * total_bytes - fixed) // per_layer)))


def build_model(cfg: TrainConfig, tiny: bool, device: torch.device):
    """Random weights from the config written in code, in the master dtype, on `device`."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from core.builders import build_tokenizer, qwen25_vl_7b_config, tiny_config
    from core.loading import resolve_attention
    from core.spec import ModelSpec

    tokenizer = build_tokenizer()
    config = (tiny_config if tiny else qwen25_vl_7b_config)(tokenizer)
    if cfg.model.num_layers is not None:
        config.text_config.num_hidden_layers = cfg.model.num_layers
    config._attn_implementation = resolve_attention(cfg.model.attn, device, cfg.precision.compute.torch)
    spec = ModelSpec.from_config(config, tokenizer, "random-tiny" if tiny else "random-7b")
    torch.manual_seed(cfg.run.seed)
    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(cfg.precision.master.torch)
        with torch.device(device if not cfg.dist.cpu_offload else "cpu"):
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    T.prepare_model(model, cfg)
    return model, spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.bench_step", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tiny", action="store_true", help="the tiny model and a small sample (CPU smoke test)"
    )
    parser.add_argument(
        "--layers", default="auto", help="decoder layers to keep (1-28) or 'auto': as many as fit"
    )
    parser.add_argument(
        "--offload", action="store_true", help="FSDP2 CPUOffloadPolicy: sharded state on the host"
    )
    parser.add_argument(
        "--steps",
        type=number(1, 10_000, integer=True),
        default=3,
        help="timed optimizer steps (after one warm-up step)",
    )
    parser.add_argument(
        "--accumulation",
        type=number(1, 10_000, integer=True),
        default=1,
        help="micro-steps (samples) per optimizer step",
    )
    parser.add_argument(
        "--seconds", type=number(1, 10_000, integer=True), help="chunks in the sample (default 24; --tiny: 4)"
    )
    parser.add_argument(
        "--size", default=None, help="source frame WIDTHxHEIGHT (default 1280x720; --tiny: 112x112)"
    )
    parser.add_argument(
        "--attn", default="auto", help="language model attention: auto, sdpa, flash_attention_2"
    )
    parser.add_argument("--loss-chunk", type=number(1, 2**20, integer=True), default=1024)
    parser.add_argument(
        "--phases",
        action="store_true",
        help="also split a step into forward, backward and optimizer, and profile its NCCL kernels",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    ctx = distributed.init()
    seconds = args.seconds or (4 if args.tiny else 24)
    width, height = map(int, (args.size or ("112x112" if args.tiny else "1280x720")).split("x"))
    tokens_estimate = seconds * 760 + 700
    if args.layers == "auto":
        if args.tiny:
            layers = None
        elif ctx.device.type == "cuda":
            total = torch.cuda.get_device_properties(ctx.device).total_memory
            layers = layers_that_fit(total, ctx.world, tokens_estimate, args.offload)
        else:
            layers = 2
    else:
        layers = int(args.layers)
    on_gpu = ctx.device.type == "cuda"
    cfg = load_train_config(None)
    cfg = TrainConfig(
        model=ModelSettings(path="random", attn=args.attn if on_gpu else "sdpa", num_layers=layers),
        optim=cfg.optim,
        schedule=cfg.schedule,
        batch=type(cfg.batch)(global_samples=ctx.world * args.accumulation, loss_chunk=args.loss_chunk),
        run=cfg.run,
        dist=DistSettings(cpu_offload=args.offload),
        precision=PrecisionSettings() if on_gpu else PrecisionSettings(compute="float32", master="float32"),
    )
    model, spec = build_model(cfg, args.tiny, ctx.device)
    sample = synthetic_sample(
        spec,
        seconds=seconds,
        width=width,
        height=height,
        prefix_tokens=40 if args.tiny else 700,
        reply_tokens=8 if args.tiny else 20,
        seed=ctx.rank,
    )
    forward = T.TrainForward(model, args.loss_chunk)
    sharded = ctx.distributed
    if sharded:
        T.shard(forward, cfg, ctx)
    else:
        forward.to(ctx.device)
    optimizer = T.build_optimizer(forward, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    placeholder = T.placeholder_sample(spec)
    if ctx.main:
        log.info(
            "%s, %d decoder layers, %d process(es) x %d sample(s) of %d tokens (%d labelled, %d vision), %s%s",
            spec.name,
            model.config.text_config.num_hidden_layers,
            ctx.world,
            args.accumulation,
            len(sample),
            sample.num_label_tokens,
            int((sample.input_ids == spec.special.video_pad).sum()),
            model.config.text_config._attn_implementation,
            ", CPU offload" if args.offload else "",
        )

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize(ctx.device)

    vision_s = _time_vision(forward, sample, ctx.device, sync)
    times, losses = [], []
    for step in range(args.steps + 1):
        if step == 1 and on_gpu:
            torch.cuda.reset_peak_memory_stats(ctx.device)
        sync()
        begin = time.perf_counter()
        stats = T.train_step(
            forward, [sample] * args.accumulation, optimizer, scheduler, cfg, ctx, placeholder, sharded
        )
        sync()
        if step:  # the first step pays for allocator warm-up and lazy initialisation
            times.append(time.perf_counter() - begin)
        losses.append(stats.loss)
        if ctx.main:
            log.info("step %d: loss %.4f, %.2f s", step, stats.loss, time.perf_counter() - begin)
    step_s = statistics.median(times)
    tokens = len(sample) * args.accumulation * ctx.world
    flops = step_flops(forward, sample) * args.accumulation * ctx.world
    matmul = _matmul_tflops(ctx.device) if on_gpu else float("nan")
    phases = (
        _phases(
            forward, sample, optimizer, scheduler, cfg, ctx, placeholder, sharded, args.accumulation, sync
        )
        if args.phases
        else None
    )
    peak = torch.cuda.max_memory_allocated(ctx.device) if on_gpu else T.memory_gib(ctx.device) * GIB
    result = {
        "device": torch.cuda.get_device_name(ctx.device) if on_gpu else "cpu",
        "world": ctx.world,
        "layers": model.config.text_config.num_hidden_layers,
        "layers_full_model": 28 if not args.tiny else model.config.text_config.num_hidden_layers,
        "offload": args.offload,
        "attention": model.config.text_config._attn_implementation,
        "tokens_per_sample": len(sample),
        "label_tokens_per_sample": sample.num_label_tokens,
        "samples_per_step": args.accumulation * ctx.world,
        "step_s_median": step_s,
        "step_s": times,
        "vision_s_per_sample": vision_s,
        "tokens_per_s": tokens / step_s,
        "tokens_per_s_per_gpu": tokens / step_s / ctx.world,
        "peak_memory_gib": peak / GIB,
        "model_tflop_per_step": flops / 1e12,
        "matmul_tflops_measured": matmul,
        "mfu": flops / step_s / ctx.world / (matmul * 1e12) if on_gpu else float("nan"),
        "phases_s": phases,
        "losses": losses,
        "torch": torch.__version__,
        "git": _git(),
    }
    if ctx.main:
        log.info(
            "%.2f s/step, %.0f tokens/s (%.0f per process), peak memory %.1f GiB, vision %.2f s/sample, "
            "MFU %.1f%% of a measured %.0f TFLOP/s",
            step_s,
            result["tokens_per_s"],
            result["tokens_per_s_per_gpu"],
            result["peak_memory_gib"],
            vision_s,
            100 * result["mfu"],
            matmul,
        )
        if phases:
            log.info("phases: %s", ", ".join(f"{k} {v:.3f} s" for k, v in phases.items()))
        if os.environ.get("OUT"):
            path = Path(os.environ["OUT"]) / "train_step.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=2))
            log.info("wrote %s", path)
        print(json.dumps(result))
    distributed.close()
    return 0 if all(math.isfinite(x) for x in losses) else 1


def step_flops(forward: T.TrainForward, sample: TrainSample) -> float:
    """Model FLOPs of one micro-step (no recomputation counted): 6 per trainable parameter and token
    through the decoder layers, causal attention (6 L d T^2), the LM head on labelled tokens only
    (the chunked loss), and the frozen vision tower's forward (2 per parameter and patch)."""
    inner = forward.model.model
    text = inner.language_model
    layer_params = sum(p.numel() for p in text.layers.parameters())
    config = forward.model.config.text_config
    tokens, labels = len(sample), sample.num_label_tokens
    head = config.hidden_size * config.vocab_size
    # QK^T and AV: 4 T^2 d a layer, halved by the causal mask, times 3 for forward + backward.
    attention = 6 * len(text.layers) * config.hidden_size * tokens**2  # heads x head_dim = hidden
    vision = 2 * sum(p.numel() for p in inner.visual.parameters()) * sample.pixel_values_videos.shape[0]
    return 6 * layer_params * tokens + attention + 6 * head * labels + vision


def _matmul_tflops(device: torch.device, n: int = 8192) -> float:
    """The bf16 matmul rate this GPU reaches (the MFU denominator), from 20 timed 8192^3 products."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    begin = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize(device)
    return 20 * 2 * n**3 / (time.perf_counter() - begin) / 1e12


def _phases(forward, sample, optimizer, scheduler, cfg, ctx, placeholder, sharded, accumulation, sync):
    """One step with a synchronisation between its phases (which removes their overlap), then one
    normal step under the profiler for the GPU time of its NCCL kernels (all-gathers in the
    forward and backward, reduce-scatters in the backward; overlapped with compute)."""
    autocast = T._autocast(cfg, ctx, sharded)
    phases = {"forward": 0.0, "backward": 0.0}
    for _ in range(accumulation):
        sync()
        begin = time.perf_counter()
        with autocast():
            loss, _count = forward(**T._to(sample, ctx.device))
        sync()
        middle = time.perf_counter()
        loss.backward()
        sync()
        phases["forward"] += middle - begin
        phases["backward"] += time.perf_counter() - middle
    begin = time.perf_counter()
    params = T.trainable_parameters(forward)
    torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sync()
    phases["optimizer"] = time.perf_counter() - begin
    if ctx.device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            T.train_step(
                forward, [sample] * accumulation, optimizer, scheduler, cfg, ctx, placeholder, sharded
            )
            sync()
        events = prof.key_averages()
        device_us = sum(e.self_device_time_total for e in events)
        nccl_us = sum(e.self_device_time_total for e in events if "nccl" in e.key.lower())
        phases["gpu_kernels_total"] = device_us / 1e6
        phases["nccl_kernels"] = nccl_us / 1e6
    return phases


def _time_vision(forward: T.TrainForward, sample: TrainSample, device: torch.device, sync) -> float:
    """The frozen tower alone on one sample (it runs inside every micro-step)."""
    inner = forward.model.model
    pixels = sample.pixel_values_videos.to(device, inner.visual.dtype)
    with torch.no_grad():
        grid = sample.video_grid_thw.to(device)
        inner.get_video_features(pixels, grid)  # warm-up
        sync()
        begin = time.perf_counter()
        inner.get_video_features(pixels, grid)
        sync()
    return time.perf_counter() - begin


def _git() -> str:
    from core.provenance import git_revision

    return git_revision()


if __name__ == "__main__":
    raise SystemExit(main())
