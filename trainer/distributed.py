"""Rank helpers: one process or many (torchrun, one or several nodes), and who may print.

`init()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and starts
the process group: NCCL for GPU tensors (gloo beside it for host ones), gloo on CPUs. Without torchrun on a GPU it starts a group of one,
so FSDP2's mixed precision and CPU offload work the same for one GPU as for many; without torchrun
on a CPU it stays a plain process. Only rank 0 prints, logs and writes shared files.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def init(device: str = "auto", timeout_s: float = 1800.0) -> Context:
    """Start (or join) the process group described by the environment; pick this rank's device."""
    under_torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        torch_device = torch.device("cuda", local_rank)
    else:
        torch_device = torch.device("cpu")
    if not dist.is_initialized() and (under_torchrun or use_cuda):
        if not under_torchrun:  # a group of one, on a free local port
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        dist.init_process_group(
            backend="cpu:gloo,cuda:nccl" if use_cuda else "gloo",  # host tensors (counts, objects) too
            timeout=timedelta(seconds=timeout_s),
            device_id=torch_device if use_cuda else None,
        )
    if dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(), local_rank, torch_device)
    return Context(0, 1, 0, torch_device)


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (a no-op in a plain process)."""
    if dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
