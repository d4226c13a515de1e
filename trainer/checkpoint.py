"""Resumable checkpoints and the inference export.

A checkpoint is a folder `out/checkpoints/step_000050/` holding everything needed to continue:

    state/             model and optimizer, written with torch.distributed.checkpoint (DCP): each
                       rank writes its own shards, and a run can resume on another process count
    rank_00000.pt      per rank: scheduler, RNG states (python, numpy, torch, cuda)
    meta.json          step, data position, config, git revision, world size
    COMPLETE           written last; a folder without it (a run killed mid-save) is ignored

The export (`out/export/`) is a `save_pretrained` folder with tokenizer and processor, which
`core.loading.load_model` opens for inference.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from core.provenance import git_revision
from trainer import distributed

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"


def step_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step_{step:06d}"


def latest(out: Path) -> Path | None:
    """The newest complete checkpoint under `out`, if any."""
    done = sorted(p.parent for p in (out / "checkpoints").glob(f"step_*/{COMPLETE}"))
    return done[-1] if done else None


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(
    out: Path,
    step: int,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    ctx: distributed.Context,
    meta: dict[str, Any],
    keep_last: int = 0,
) -> Path:
    """Write the checkpoint of `step` (all ranks call this) and prune old ones on rank 0."""
    path = step_dir(out, step)
    if ctx.main and path.exists():
        shutil.rmtree(path)  # a partial save of the same step from a killed run
    distributed.barrier()
    model_sd, optim_sd = get_state_dict(module, optimizer)
    with _one_process_ok(ctx):
        dcp.save(
            {"model": model_sd, "optim": optim_sd},
            checkpoint_id=str(path / "state"),
            no_dist=not ctx.distributed,
        )
    torch.save({"scheduler": scheduler.state_dict(), "rng": rng_state()}, path / f"rank_{ctx.rank:05d}.pt")
    distributed.barrier()
    if ctx.main:
        info = {"step": step, "world": ctx.world, "time": time.time(), "git": git_revision(), **meta}
        (path / "meta.json").write_text(json.dumps(info, indent=2))
        (path / COMPLETE).write_text("")
        if keep_last:
            done = sorted(p.parent for p in (out / "checkpoints").glob(f"step_*/{COMPLETE}"))
            for old in done[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()
    return path


def load(
    path: Path,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    ctx: distributed.Context,
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG from `path`; return its meta.json."""
    meta = json.loads((path / "meta.json").read_text())
    model_sd, optim_sd = get_state_dict(module, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    with _one_process_ok(ctx):
        dcp.load(state, checkpoint_id=str(path / "state"), no_dist=not ctx.distributed)
    set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    own = path / f"rank_{ctx.rank:05d}.pt"
    if not own.is_file():  # resumed on more processes than saved: rank 0's schedule, fresh RNG
        log.warning("checkpoint %s has no state for rank %d; using rank 0's scheduler", path, ctx.rank)
        own = path / "rank_00000.pt"
    extra = torch.load(own, weights_only=False)
    scheduler.load_state_dict(extra["scheduler"])
    if meta.get("world") == ctx.world:
        set_rng_state(extra["rng"])
    else:
        log.warning(
            "checkpoint was written by %s processes, this run has %d: RNG states not restored",
            meta.get("world"),
            ctx.world,
        )
    return meta


@contextmanager
def _one_process_ok(ctx: distributed.Context):
    """DCP warns that it writes from one process when there is no process group; that is intended
    (one format for any process count, so a checkpoint resumes on another number of processes)."""
    with warnings.catch_warnings():
        if not ctx.distributed:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def export(
    module: nn.Module,
    hf_model: nn.Module,
    prefix: str,
    tokenizer: Any,
    processor: Any,
    path: Path,
    dtype: torch.dtype,
    ctx: distributed.Context,
) -> Path:
    """Gather the full weights onto rank 0 and write a save_pretrained folder core can load.

    `module` is what was sharded (the training wrapper), `hf_model` the transformers model inside it
    whose state-dict keys are `module`'s keys without `prefix`.
    """
    full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if ctx.main:
        state = {k.removeprefix(prefix): v.to(dtype) for k, v in full.items()}
        if path.exists():
            shutil.rmtree(path)
        hf_model.save_pretrained(path, state_dict=state)
        tokenizer.save_pretrained(path)
        if processor is not None:
            processor.save_pretrained(path)
    distributed.barrier()
    return path
