"""Training on several processes with PyTorch's own engine: torchrun starts the processes and
sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; imgclf reads them, joins the
process group (NCCL on GPUs, gloo on CPUs) and wraps the model in DistributedDataParallel.

Every rank trains on its own share of each epoch's shuffled order (``order[rank::world]``), so
the global batch is ``--batch-size`` x processes; only rank 0 writes checkpoints, the bundle and
the report, always from the unwrapped model.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["World", "all_reduce_sum", "init_from_environment", "shutdown"]

# How long ranks wait for each other at start-up and in collectives before giving up.
PROCESS_GROUP_TIMEOUT = datetime.timedelta(minutes=10)


@dataclass(frozen=True)
class World:
    """Where this process stands: rank among ``size`` processes, and its GPU on this machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    backend: str | None = None  # None: a single process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_environment(device: torch.device) -> World:
    """Join the process group torchrun set up (a single-process World when not launched by it)."""
    if not _launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return World()
    backend = "nccl" if device.type == "cuda" else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=PROCESS_GROUP_TIMEOUT)
    return World(
        rank=dist.get_rank(),
        size=dist.get_world_size(),
        local_rank=local_rank,
        local_size=int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
        backend=backend,
    )


def all_reduce_sum(world: World, *tensors: torch.Tensor) -> None:
    """Sum tensors over all ranks, in place (nothing to do for a single process)."""
    if world.distributed:
        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
