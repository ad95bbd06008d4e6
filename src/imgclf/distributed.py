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
import re
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
    return _launched_by_torchrun_in(os.environ)


def expand_hostlist(hostlist: str) -> list[str]:
    """SLURM's compact host list ("gpu[01-03,07],login1") as host names, in order."""
    hosts = []
    for part in re.findall(r"(?:[^,\[]+|\[[^\]]*\])+", hostlist):  # commas inside brackets do not split
        match = re.fullmatch(r"(.*)\[(.*)\](.*)", part)
        if not match:
            hosts.append(part)
            continue
        prefix, ranges, suffix = match.groups()
        for item in ranges.split(","):
            low, _, high = item.partition("-")
            for number in range(int(low), int(high or low) + 1):
                hosts.append(f"{prefix}{number:0{len(low)}d}{suffix}")
    return hosts


def slurm_environment(environ: dict[str, str]) -> dict[str, str]:
    """torchrun's variables from those ``srun`` sets for each task of a job step (empty outside a
    step of several tasks, or when torchrun's are there already). The batch script itself is a
    step of one task: a plain ``imgclf train`` in it stays one process."""
    tasks = int(environ.get("SLURM_STEP_NUM_TASKS", "1") or 1)
    if _launched_by_torchrun_in(environ) or tasks < 2 or "SLURM_PROCID" not in environ:
        return {}
    nodes = expand_hostlist(environ.get("SLURM_STEP_NODELIST", environ.get("SLURM_JOB_NODELIST", "")))
    per_node = environ.get("SLURM_STEP_TASKS_PER_NODE", "").split("(")[0].split(",")[0]
    return {"RANK": environ["SLURM_PROCID"], "WORLD_SIZE": str(tasks), "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
            "LOCAL_WORLD_SIZE": per_node or "1", "MASTER_ADDR": environ.get("MASTER_ADDR", nodes[0] if nodes else
            "127.0.0.1"), "MASTER_PORT": environ.get("MASTER_PORT", str(29500 + int(environ.get("SLURM_JOB_ID", "0"))
            % 1000))}  # fmt: skip


def _launched_by_torchrun_in(environ) -> bool:
    return "RANK" in environ and "WORLD_SIZE" in environ


def init_from_environment(device: torch.device) -> World:
    """Join the process group torchrun set up, or the one ``srun`` starts one task per process
    for (a single-process World when launched by neither)."""
    os.environ.update(slurm_environment(dict(os.environ)))
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
