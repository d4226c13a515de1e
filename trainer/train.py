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
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import yaml
from torch import nn

from core.errors import ConfigError
from core.paths import make_output_folder, same_file
from core.spec import ModelSpec
from trainer import checkpoint, distributed
from trainer.config import Decay, ScheduleSettings, TrainConfig
from trainer.data.errors import SampleError
from trainer.data.sample import IGNORE_INDEX, TrainSample
from trainer.loss import chunked_cross_entropy, shift_targets

if TYPE_CHECKING:
    from core.download import ProgressCallback

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


def resolve_model_path(path: str, progress: ProgressCallback | None = None) -> str:
    """The checkpoint folder of `model.path`, as `python -m core run --model` resolves it
    (`core.loading.model_folder`): 'tiny' built on first use, a local folder as is, a hub id from the
    Hugging Face cache, downloaded first when needed. A missing folder, an unknown id or no network is
    a `ModelNotFoundError` of one sentence."""
    from core.loading import model_folder

    return str(model_folder(path, progress=progress))


def load_for_training(cfg: TrainConfig, device: torch.device, source: str | None = None) -> Loaded:
    """The checkpoint in the master dtype on the host, the vision tower frozen in the compute dtype.
    `source`: the folder `resolve_model_path` gave for `cfg.model.path` (resolved here when None)."""
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from core.loading import resolve_attention

    source = source or resolve_model_path(cfg.model.path)
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

    def rank_indices(self, start_step: int, end_step: int, rank: int | None = None) -> Iterator[int]:
        """This rank's samples from `start_step` to `end_step`, in micro-step order (every rank's, in
        window order, when `rank` is None)."""
        cached: tuple[int, list[int]] | None = None
        first, stride = (0, 1) if rank is None else (rank, self.world)
        for step in range(start_step, end_step):
            epoch, within = divmod(step, self.steps_per_epoch)
            if cached is None or cached[0] != epoch:
                cached = (epoch, self.order(epoch))
            base = within * self.global_batch
            yield from cached[1][base + first : base + self.global_batch : stride]


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


PROBE_LIMIT = 64  # samples tried before training for one that builds; none of them: the data are wrong


def check_usable(dataset: Dataset, indices: Sequence[int], limit: int = PROBE_LIMIT) -> int:
    """Refuse (ConfigError) a run that has no usable sample among the distinct samples `indices` it
    reads (every video missing, a wrong data.dir): it would train on placeholders only and export the
    model unchanged. Tries them in order until one builds, at most `limit` (so a dataset whose first
    `limit` samples all fail is refused too); the one found is built again when the run reads it.
    Returns how many were tried and skipped before it."""
    problems: list[str] = []
    for index in indices[:limit]:
        try:
            dataset[index]
        except SampleError as exc:
            problems.append(str(exc))
            continue
        return len(problems)
    if not problems:
        return 0  # nothing left to read: a finished run
    if len(problems) == len(indices):
        scope = f"all {len(problems)} samples this run reads were skipped"
    else:
        scope = f"the first {len(problems)} of the {len(indices)} samples this run reads were all skipped"
    raise ConfigError(
        f"no usable training sample: {scope} (the first: {problems[0]}); check data.dir and the files "
        "its data lines name"
    )


class _SkipTally:
    """Samples read and skipped over the run (every rank's): one warning, as soon as it is clear, when
    most are unusable, and a summary at the end."""

    AFTER = 32  # samples read before the share of skipped ones is judged (or the whole run, if shorter)

    def __init__(self, run_samples: int, main: bool) -> None:
        self.run_samples, self.main = run_samples, main
        self.read = self.skipped = 0
        self.first = ""  # this rank's first reason
        self.warned = False

    def note(self, problem: str) -> None:
        self.first = self.first or problem

    def add(self, read: int, skipped: int) -> None:
        self.read += read
        self.skipped += skipped
        if self.read < min(self.AFTER, self.run_samples) or self.read >= self.run_samples:
            return  # too early to judge, or the end of the run: the summary says it
        if self.main and self.mostly_skipped and not self.warned:
            self.warned = True
            log.warning("%s so far; the run goes on with the rest: %s", self._counts(), self._advice())

    @property
    def mostly_skipped(self) -> bool:
        return 2 * self.skipped > self.read

    def summary(self) -> None:
        if not (self.main and self.skipped):
            return
        if self.mostly_skipped:
            log.warning("%s; the run trained on the rest only: %s", self._counts(), self._advice())
        else:
            log.info("%s (see the warnings above)", self._counts())

    def _counts(self) -> str:
        return f"{self.skipped} of the {self.read} samples read were unusable and skipped"

    def _advice(self) -> str:
        first = f"the first: {self.first}" if self.first else "see the other ranks' warnings"
        return f"check data.dir and the files its data lines name ({first})"


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


def run_outputs(cfg: TrainConfig) -> dict[str, Path]:
    """What a run writes in run.out, each named for messages."""
    out = Path(cfg.run.out)
    written = {
        "the config file": out / "config.yaml",
        "the metrics file": out / "metrics.jsonl",
        "the TensorBoard folder": out / "tensorboard",
        "the checkpoints folder": out / "checkpoints",
    }
    if cfg.run.export:
        written["the export folder"] = out / "export"  # replaced as a whole at the end of the run
    return written


def check_run_outputs(cfg: TrainConfig, inputs: dict[str, str | os.PathLike | None]) -> None:
    """Refuse (ConfigError), before anything is created, a run whose outputs would land on or in an
    input (`inputs`: setting -> folder, such as the model folder and data.dir; None is skipped):
    run.out that is an input folder, or an input on or inside one of the outputs (the export, which
    the run replaces at its end; the checkpoints ...). An input elsewhere in run.out is fine
    (model.path=runs/x/export with run.out=runs), and so is run.out in a subfolder of an input (its
    own new files, beside the input's: data.dir=. with run.out=runs/x). Symlinks and hard links count
    as what they name."""
    out = Path(cfg.run.out)
    for setting, given in inputs.items():
        if given is None:
            continue
        folder = Path(given)
        if same_file(out, folder):
            raise ConfigError(
                f"run.out '{out}' is the {setting} '{folder}', so the run would write its checkpoints "
                "and export among its own input's files; choose another run.out"
            )
        for what, path in run_outputs(cfg).items():
            if _inside(folder, path):
                where = "is" if same_file(folder, path) else "lies inside"
                raise ConfigError(
                    f"the {setting} '{folder}' {where} {what} '{path}' of run.out, which the run writes "
                    "over; choose another run.out"
                )


def _inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether `path` is `folder` or lies in it, by core.paths.same_file on each of its folders."""
    real = Path(os.path.realpath(path))
    return any(same_file(p, folder) for p in (real, *real.parents))


def _fetch_model(cfg: TrainConfig, ctx: distributed.Context) -> str:
    """The model folder, a hub id downloaded first under a progress bar on rank 0 (as `core run`)."""
    if not ctx.main:
        return resolve_model_path(cfg.model.path)
    from rich.console import Console

    from core.download import progress_bar

    with progress_bar(Console(stderr=True)) as show:
        return resolve_model_path(cfg.model.path, progress=show)


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
    # Where the run reads and writes, checked before anything is created, loaded or trained: its
    # outputs never land in its inputs (an export over the model it trains, say).
    source = _fetch_model(cfg, ctx)
    inputs = {"model folder (model.path)": source, "dataset folder (data.dir)": cfg.data.dir}
    check_run_outputs(cfg, inputs if dataset is None else {"model folder (model.path)": source})
    make_output_folder(out, "the run folder (run.out)")
    loaded = load_for_training(cfg, ctx.device, source)
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
    # A run none of whose samples can be used stops here, not after training on placeholders only
    # (every rank tries the same samples, so all stop together).
    upcoming = list(dict.fromkeys(plan.rank_indices(start, total_steps)))
    check_usable(dataset, upcoming)
    if ctx.main:
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
    tally = _SkipTally((total_steps - start) * plan.global_batch, ctx.main)

    def micro_batches() -> Iterator[TrainSample | None]:
        for _ in range(accumulation):
            index, sample, problem = next(stream)
            if sample is None:
                log.warning("rank %d: skipping sample %d: %s", ctx.rank, index, problem)
                tally.note(problem)
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
            tally.add(plan.global_batch, stats.skipped)
            metrics.write(record, show=done % cfg.run.log_every == 0 or done == total_steps)
            advance(stats)
            if done % cfg.run.save_every == 0 and done < total_steps:
                _save(out, done, forward, optimizer, scheduler, ctx, cfg, plan)
                last_saved = done

    tally.summary()

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
                "step %d  loss %.4f  lr %.3g  grad norm %.3g  %.0f tokens/s  %.1f s/step  %.1f GiB%s",
                record["step"],
                record["loss"],
                record["lr"],
                record["grad_norm"],
                record["tokens_per_s"],
                record["step_s"],
                record["memory_gib"],
                f"  {record['skipped']} of {len(record['samples'])} samples skipped"
                if record["skipped"]
                else "",
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
