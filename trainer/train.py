"""The training recipe, top to bottom: set up, train, save (`python -m trainer --config ...`).

One sample per micro-step (no packing), `global_samples / world` micro-steps per optimizer step.
Each micro-step's loss is the *sum* of cross-entropies over its labelled tokens; once the step's
micro-steps are done, the label count is summed over every rank and micro-step and the gradients
are divided by it, so the step's gradient is that of the mean over all labelled tokens of the
whole global batch (the published normalisation) without loading any sample twice.

Model: the stock transformers Qwen2.5-VL, driven through its public modules (vision tower,
embeddings, language model with explicit 3-D `position_ids`, LM head). The vision tower and its
merger are frozen: kept in the compute dtype, run under no_grad, outside the optimizer and
outside FSDP's sharding. Decoder layers use transformers' gradient checkpointing. Under
torch.distributed each decoder layer and then the root are sharded with FSDP2 (`fully_shard`),
bf16 compute over float32 master weights; a plain process trains the module as it is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import yaml
from torch import nn

from core.errors import ConfigError
from core.spec import ModelSpec
from trainer import checkpoint, distributed
from trainer.config import Decay, ScheduleSettings, TrainConfig
from trainer.data.errors import SampleError
from trainer.data.sample import IGNORE_INDEX, TrainSample
from trainer.loss import chunked_cross_entropy, shift_targets

log = logging.getLogger("trainer")

PREFIX = "model."  # TrainForward's attribute holding the transformers model (state-dict key prefix)


class Dataset(Protocol):
    """What the loop needs from the data side (trainer.data.open_dataset returns one)."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> TrainSample: ...


# -- the model -------------------------------------------------------------------------------------


@dataclass
class Loaded:
    model: nn.Module  # Qwen2_5_VLForConditionalGeneration, trainable language model
    spec: ModelSpec  # the same checkpoint seen by core (tokenizer, special ids, vision spec), no weights
    tokenizer: Any
    processor: Any


def resolve_model_path(path: str) -> str:
    """'tiny' -> core's tiny random-weight model (built on first use); a folder or a hub id as is."""
    from core.builders import tiny_model_dir

    if path == "tiny":
        return str(tiny_model_dir())
    local = Path(path).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise ConfigError(f"model.path '{path}' has no config.json; pass a folder written by save_pretrained")
    return str(local) if local.exists() else path


def load_for_training(cfg: TrainConfig, device: torch.device) -> Loaded:
    """The checkpoint in the master dtype on the host, the vision tower frozen in the compute dtype."""
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from core.loading import resolve_attention

    source = resolve_model_path(cfg.model.path)
    config = AutoConfig.from_pretrained(source)
    if cfg.model.num_layers is not None:
        config.text_config.num_hidden_layers = min(cfg.model.num_layers, config.text_config.num_hidden_layers)
    attn = resolve_attention(cfg.model.attn, device, cfg.precision.compute.torch)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        source, config=config, dtype=cfg.precision.master.torch, attn_implementation=attn
    )
    tokenizer = AutoTokenizer.from_pretrained(source)
    try:
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError, TypeError):
        processor = None
    spec = ModelSpec.from_config(model.config, tokenizer, source, processor)
    prepare_model(model, cfg)
    return Loaded(model, spec, tokenizer, processor)


def prepare_model(model: nn.Module, cfg: TrainConfig) -> None:
    """Freeze the vision tower (with its merger) in the compute dtype; checkpoint decoder layers."""
    from core import attention

    visual = model.model.visual
    visual.requires_grad_(False)
    visual.to(cfg.precision.compute.torch)
    # The frozen tower's window attention as core runs it (all of a chunk's windows in one call).
    attention.register()
    model.set_attn_implementation({"vision_config": attention.VARLEN_VISION})
    if cfg.model.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()


class TrainForward(nn.Module):
    """One sample -> (summed cross-entropy over its labelled tokens, label count).

    The sharded root: FSDP2 gathers the embeddings, final norm and LM head when this forward starts,
    so the chunked loss can use the head's weight directly.
    """

    def __init__(self, model: nn.Module, loss_chunk: int) -> None:
        super().__init__()
        self.model = model
        self.loss_chunk = loss_chunk
        self.video_token_id = model.config.video_token_id

    def forward(
        self,
        input_ids: torch.Tensor,  # [L]
        labels: torch.Tensor,  # [L]
        position_ids: torch.Tensor,  # [3, L]
        pixel_values_videos: torch.Tensor,  # [patches, C*T*P*P]
        video_grid_thw: torch.Tensor,  # [chunks, 3]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        inner = self.model.model
        embeds = inner.get_input_embeddings()(input_ids).unsqueeze(0)  # [1, L, hidden]
        is_video = input_ids == self.video_token_id
        if pixel_values_videos.numel():
            with torch.no_grad():  # frozen tower: no activations kept for backward
                visual = inner.visual
                out = inner.get_video_features(pixel_values_videos.to(visual.dtype), video_grid_thw)
                features = torch.cat(list(out.pooler_output), dim=0).to(embeds.dtype)  # [pads, hidden]
            if features.shape[0] != int(is_video.sum()):
                raise ValueError(
                    f"{int(is_video.sum())} video pads but the vision tower gave {features.shape[0]} tokens"
                )
            embeds = embeds.masked_scatter(is_video[None, :, None], features)
        hidden = inner.language_model(
            inputs_embeds=embeds,
            position_ids=position_ids.unsqueeze(1),  # [3, 1, L]: the model takes ours, no rope index
            use_cache=False,
        ).last_hidden_state[0]  # [L, hidden]
        positions, targets = shift_targets(labels)
        weight = self.model.lm_head.weight
        if targets.numel() == 0:  # keep every trainable tensor in the graph so ranks stay in step
            return (hidden.sum() + weight.sum()) * 0.0, targets.new_zeros(())
        loss = chunked_cross_entropy(hidden[positions], weight, targets, self.loss_chunk)
        return loss, targets.new_tensor(targets.numel())


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def shard(forward: TrainForward, cfg: TrainConfig, ctx: distributed.Context) -> None:
    """FSDP2: each decoder layer, then the root; the frozen vision tower stays whole on each rank."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    model = forward.model
    mesh = init_device_mesh(ctx.device.type, (ctx.world,))
    mp = MixedPrecisionPolicy(param_dtype=cfg.precision.compute.torch, reduce_dtype=torch.float32)
    offload = CPUOffloadPolicy() if cfg.dist.cpu_offload else OffloadPolicy()
    if cfg.dist.cpu_offload:  # shards stay on the host; the frozen tower and buffers go to the device
        model.model.visual.to(ctx.device)
        for module in model.modules():
            for name, buf in module.named_buffers(recurse=False):
                module._buffers[name] = buf.to(ctx.device)
    else:
        model.to(ctx.device)
    kwargs = {"mesh": mesh, "mp_policy": mp, "offload_policy": offload}
    for layer in model.model.language_model.layers:
        fully_shard(layer, reshard_after_forward=cfg.dist.reshard_after_forward, **kwargs)
    fully_shard(forward, ignored_params=set(model.model.visual.parameters()), **kwargs)


# -- the data order ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataPlan:
    """Which sample each rank reads at each micro-step: deterministic from seed, epoch and step.

    Epoch e is a permutation of the dataset (seeded by seed + e); optimizer step s of the epoch takes
    the next `world x accumulation` entries, and entry j of that window goes to rank j % world.
    A tail shorter than one global batch is dropped.
    """

    size: int
    world: int
    accumulation: int
    epochs: int
    seed: int
    shuffle: bool = True

    @property
    def global_batch(self) -> int:
        return self.world * self.accumulation

    @property
    def steps_per_epoch(self) -> int:
        return self.size // self.global_batch

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.size))
        generator = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def window(self, step: int) -> list[int]:
        """The global batch of optimizer step `step`: sample indices, rank-interleaved."""
        epoch, within = divmod(step, self.steps_per_epoch)
        start = within * self.global_batch
        return self.order(epoch)[start : start + self.global_batch]

    def rank_indices(self, start_step: int, end_step: int, rank: int) -> Iterator[int]:
        """This rank's samples from `start_step` to `end_step`, in micro-step order."""
        cached: tuple[int, list[int]] | None = None
        for step in range(start_step, end_step):
            epoch, within = divmod(step, self.steps_per_epoch)
            if cached is None or cached[0] != epoch:
                cached = (epoch, self.order(epoch))
            base = within * self.global_batch
            yield from cached[1][base + rank : base + self.global_batch : self.world]


def open_data(cfg: TrainConfig, spec: ModelSpec) -> Dataset:
    """The data side's dataset for `cfg.data`; a wrong folder or pattern is the user's error."""
    from trainer.data import FrameBudget, open_dataset

    sizes = {
        k: getattr(cfg.data, k) for k in ("min_pixels", "max_pixels") if getattr(cfg.data, k) is not None
    }
    try:
        return open_dataset(
            Path(cfg.data.dir),
            list(cfg.data.patterns) if cfg.data.patterns else None,
            spec,
            repeat=dict(cfg.data.repeat) if cfg.data.repeat else None,
            budget=FrameBudget(**sizes),
        )
    except (FileNotFoundError, ValueError, SampleError) as exc:
        raise ConfigError(
            f"cannot open the training data ({exc}); check data.dir and data.patterns"
        ) from None


class _Guarded(torch.utils.data.Dataset):
    """Index -> (index, sample or None): a malformed sample is logged and becomes None, not a crash."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, TrainSample | None, str]:
        try:
            return index, self.dataset[index], ""
        except SampleError as exc:
            return index, None, str(exc)


def _as_is(item: Any) -> Any:
    return item


def sample_stream(
    dataset: Dataset, indices: Sequence[int], num_workers: int
) -> Iterator[tuple[int, TrainSample | None, str]]:
    """Samples in the given order, decoded ahead by `num_workers` processes."""
    loader = torch.utils.data.DataLoader(
        _Guarded(dataset),
        batch_size=None,
        sampler=list(indices),
        num_workers=num_workers,
        collate_fn=_as_is,
        prefetch_factor=2 if num_workers else None,
        persistent_workers=False,
    )
    return iter(loader)


def placeholder_sample(spec: ModelSpec) -> TrainSample:
    """Two text tokens and no labels: run in place of a malformed sample, so every rank makes the same
    forward/backward calls (FSDP's collectives) while the step's loss and gradient are unchanged."""
    ids = torch.tensor([spec.special.im_start, spec.special.im_end])
    return TrainSample(
        input_ids=ids,
        labels=torch.full_like(ids, IGNORE_INDEX),
        position_ids=torch.arange(2).expand(3, 2).clone(),
        pixel_values_videos=torch.zeros(0, 3 * spec.vision.temporal_patch_size * spec.vision.patch_size**2),
        video_grid_thw=torch.zeros(0, 3, dtype=torch.long),
        source="<placeholder for a malformed sample>",
    )


# -- the schedule ----------------------------------------------------------------------------------


def lr_factor(step: int, total_steps: int, schedule: ScheduleSettings) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based), as transformers' schedulers.

    Warmup: step / warmup_steps (so the first step has lr 0, as in transformers), warmup_steps =
    ceil(warmup_ratio x total). Then the decay from 1 towards min_lr_ratio, reached at `total_steps`.
    """
    warmup = math.ceil(schedule.warmup_ratio * total_steps)
    if step < warmup:
        return step / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if schedule.decay is Decay.COSINE:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule.decay is Decay.LINEAR:
        shape = 1.0 - progress
    else:
        shape = 1.0
    return schedule.min_lr_ratio + (1.0 - schedule.min_lr_ratio) * shape


# -- one optimizer step ------------------------------------------------------------------------------


@dataclass
class StepStats:
    loss: float  # mean cross-entropy per labelled token over the global batch
    labels: int  # labelled tokens in the global batch
    tokens: int  # all tokens in the global batch
    skipped: int  # malformed samples replaced by the placeholder, over all ranks
    grad_norm: float  # before clipping
    lr: float
    seconds: float


def _to(sample: TrainSample, device: torch.device) -> dict[str, torch.Tensor]:
    return {
        "input_ids": sample.input_ids.to(device, non_blocking=True),
        "labels": sample.labels.to(device, non_blocking=True),
        "position_ids": sample.position_ids.to(device, non_blocking=True),
        "pixel_values_videos": sample.pixel_values_videos.to(device, non_blocking=True),
        "video_grid_thw": sample.video_grid_thw.to(device),  # the tower builds its rotary positions from it
    }


def train_step(
    forward: nn.Module,
    samples: Iterator[TrainSample | None] | Sequence[TrainSample | None],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    cfg: TrainConfig,
    ctx: distributed.Context,
    placeholder: TrainSample,
    sharded: bool,
) -> StepStats:
    """Micro-steps over this rank's samples, then normalise, clip and step."""
    begin = time.perf_counter()
    params = trainable_parameters(forward)
    totals = torch.zeros(4, dtype=torch.float64)  # loss sum, labels, tokens, skipped
    autocast = _autocast(cfg, ctx, sharded)
    for sample in samples:
        if sample is None:
            sample, skipped = placeholder, 1
        else:
            skipped = 0
        with autocast():
            loss, count = forward(**_to(sample, ctx.device))
        loss.backward()
        totals += torch.tensor([loss.item(), count.item(), len(sample) * (1 - skipped), skipped])
    distributed.all_reduce_sum(totals)
    if ctx.world > 1 and not sharded:  # replicated parameters: sum the gradients by hand
        for p in params:
            if p.grad is not None:
                distributed.all_reduce_sum(p.grad)
    labels = max(totals[1].item(), 1.0)
    # FSDP's reduce-scatter averages over ranks; the published loss is a sum over ranks / labels.
    scale = (ctx.world if sharded else 1) / labels
    for p in params:
        if p.grad is not None:
            p.grad.mul_(scale)
    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return StepStats(
        loss=totals[0].item() / labels,
        labels=int(totals[1].item()),
        tokens=int(totals[2].item()),
        skipped=int(totals[3].item()),
        grad_norm=float(norm),
        lr=lr,
        seconds=time.perf_counter() - begin,
    )


def _autocast(cfg: TrainConfig, ctx: distributed.Context, sharded: bool) -> Callable[[], Any]:
    """FSDP casts to the compute dtype itself; an unsharded module in float32 master needs autocast."""
    compute, master = cfg.precision.compute.torch, cfg.precision.master.torch
    if sharded or compute == master:
        return contextlib.nullcontext
    return lambda: torch.autocast(ctx.device.type, dtype=compute)


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class RunResult:
    out: Path
    steps: list[dict[str, Any]] = field(default_factory=list)  # this process's step records
    export: Path | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(forward: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        trainable_parameters(forward),
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.betas),
        eps=cfg.optim.eps,
        weight_decay=cfg.optim.weight_decay,
    )


def memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def train(cfg: TrainConfig, dataset: Dataset | None = None) -> RunResult:
    """Run the recipe: resume if a checkpoint exists, train to the end, save and export."""
    ctx = distributed.init()
    out = Path(cfg.run.out)
    try:
        return _train(cfg, ctx, out, dataset)
    finally:
        distributed.close()


def _train(cfg: TrainConfig, ctx: distributed.Context, out: Path, dataset: Dataset | None) -> RunResult:
    # -- setup -------------------------------------------------------------------------------------
    seed_everything(cfg.run.seed + ctx.rank)
    accumulation = cfg.batch.accumulation(ctx.world)
    loaded = load_for_training(cfg, ctx.device)
    if dataset is None:
        dataset = open_data(cfg, loaded.spec)
    plan = DataPlan(
        len(dataset), ctx.world, accumulation, cfg.schedule.epochs, cfg.run.seed, cfg.data.shuffle
    )
    if plan.total_steps == 0:
        raise ConfigError(
            f"the dataset has {len(dataset)} samples, fewer than one step's {plan.global_batch}; "
            "lower batch.global_samples or add data"
        )
    total_steps = min(plan.total_steps, cfg.run.max_steps or plan.total_steps)

    forward = TrainForward(loaded.model, cfg.batch.loss_chunk)
    sharded = ctx.distributed and cfg.dist.fsdp
    if sharded:
        shard(forward, cfg, ctx)
    else:
        forward.to(ctx.device)
    optimizer = build_optimizer(forward, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, cfg.schedule)
    )

    start = 0
    previous = checkpoint.latest(out) if cfg.run.resume else None
    if previous is not None:
        meta = checkpoint.load(previous, forward, optimizer, scheduler, ctx)
        expected = {"dataset_size": plan.size, "global_samples": plan.global_batch, "seed": cfg.run.seed}
        saved = {k: meta.get(k) for k in expected}
        if saved != expected:
            raise ConfigError(
                f"checkpoint {previous} was written for {saved}, this run has {expected}, so its data "
                "position means nothing here; use a new run.out or run.resume=false"
            )
        start = meta["step"]
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        frozen = sum(p.numel() for p in loaded.model.model.visual.parameters())
        log.info(
            "%s: %d processes x %d accumulation = %d samples/step; %d samples, %d steps%s; "
            "%.1fM trainable, %.1fM frozen (vision); %s",
            loaded.spec.name,
            ctx.world,
            accumulation,
            plan.global_batch,
            plan.size,
            total_steps,
            f", resuming after step {start} ({previous})" if start else "",
            sum(p.numel() for p in trainable_parameters(forward)) / 1e6,  # DTensors count their global size
            frozen / 1e6,
            f"FSDP2 ({'gloo' if ctx.device.type == 'cpu' else 'nccl'})" if sharded else "one process",
        )

    # -- train -------------------------------------------------------------------------------------
    result = RunResult(out)
    placeholder = placeholder_sample(loaded.spec)
    stream = sample_stream(
        dataset, list(plan.rank_indices(start, total_steps, ctx.rank)), cfg.data.num_workers
    )
    metrics = _Metrics(out, ctx, cfg.run.tensorboard)

    def micro_batches() -> Iterator[TrainSample | None]:
        for _ in range(accumulation):
            index, sample, problem = next(stream)
            if sample is None:
                log.warning("rank %d: skipping sample %d: %s", ctx.rank, index, problem)
            yield sample

    last_saved = start
    with _progress(ctx, total_steps, start) as advance:
        for step in range(start, total_steps):
            stats = train_step(forward, micro_batches(), optimizer, scheduler, cfg, ctx, placeholder, sharded)
            done = step + 1
            record = {
                "step": done,
                "loss": stats.loss,
                "lr": stats.lr,
                "grad_norm": stats.grad_norm,
                "labels": stats.labels,
                "tokens": stats.tokens,
                "skipped": stats.skipped,
                "tokens_per_s": stats.tokens / stats.seconds,
                "step_s": stats.seconds,
                "memory_gib": memory_gib(ctx.device),
                "samples": plan.window(step),
            }
            result.steps.append(record)
            metrics.write(record, show=done % cfg.run.log_every == 0 or done == total_steps)
            advance(stats)
            if done % cfg.run.save_every == 0 and done < total_steps:
                _save(out, done, forward, optimizer, scheduler, ctx, cfg, plan)
                last_saved = done

    # -- save --------------------------------------------------------------------------------------
    if last_saved != total_steps:
        _save(out, total_steps, forward, optimizer, scheduler, ctx, cfg, plan)
    if cfg.run.export:
        result.export = checkpoint.export(
            forward,
            loaded.model,
            PREFIX,
            loaded.tokenizer,
            loaded.processor,
            out / "export",
            cfg.precision.compute.torch,
            ctx,
        )
        if ctx.main:
            log.info(
                "exported the trained model to %s (python -m core run --model %s)",
                result.export,
                result.export,
            )
    metrics.close()
    return result


def _save(out, step, forward, optimizer, scheduler, ctx, cfg: TrainConfig, plan: DataPlan) -> None:
    meta = {
        "dataset_size": plan.size,
        "global_samples": plan.global_batch,
        "seed": cfg.run.seed,
        "samples_seen": step * plan.global_batch,  # the data position: steps x global batch
        "config": cfg.to_dict(),
    }
    path = checkpoint.save(out, step, forward, optimizer, scheduler, ctx, meta, keep_last=cfg.run.keep_last)
    if ctx.main:
        log.info("saved checkpoint %s", path)


class _Metrics:
    """metrics.jsonl (and TensorBoard when installed) on rank 0; one log line per `log_every` steps."""

    def __init__(self, out: Path, ctx: distributed.Context, tensorboard: bool) -> None:
        self.main = ctx.main
        self.writer = None
        if not self.main:
            return
        out.mkdir(parents=True, exist_ok=True)
        self.file = (out / "metrics.jsonl").open("a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                log.info("tensorboard is not installed: metrics go to %s only", out / "metrics.jsonl")

    def write(self, record: dict[str, Any], show: bool) -> None:
        if not self.main:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key in ("loss", "lr", "grad_norm", "tokens_per_s", "memory_gib"):
                self.writer.add_scalar(f"train/{key}", record[key], record["step"])
        if show:
            log.info(
                "step %d  loss %.4f  lr %.3g  grad norm %.3g  %.0f tokens/s  %.1f s/step  %.1f GiB",
                record["step"],
                record["loss"],
                record["lr"],
                record["grad_norm"],
                record["tokens_per_s"],
                record["step_s"],
                record["memory_gib"],
            )

    def close(self) -> None:
        if self.main:
            self.file.close()
            if self.writer is not None:
                self.writer.close()


@contextlib.contextmanager
def _progress(ctx: distributed.Context, total: int, start: int) -> Iterator[Callable[[StepStats], None]]:
    """A rich progress bar on rank 0 when stderr is a terminal; nothing otherwise."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
        console=console,
        disable=not (ctx.main and console.is_terminal),
    )
    with progress:
        task = progress.add_task("train", total=total, completed=start, loss="-")

        def advance(stats: StepStats) -> None:
            progress.update(task, advance=1, loss=f"{stats.loss:.4f}")

        yield advance
