"""Data-parallel training across processes: what `torchrun` sets up, and what the trainer asks of it.

    torchrun --nproc_per_node 2 --master_addr 127.0.0.1 --master_port 29511 -m trainer train --config ...

torchrun starts one process per rank with RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address in the
environment; each process joins the group (gloo on CPUs, NCCL on GPUs, one GPU per local rank) and trains
DistributedDataParallel on its own contiguous share of the stream (trainer.data.shard): gradients are
averaged across ranks at every step, so N ranks of B rows are one process with N x B rows. Only rank 0
evaluates, logs and writes the checkpoint. Without torchrun (no WORLD_SIZE), nothing here is used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from trainer.errors import TrainerError


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: rank of world_size (1 and 0 for a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that evaluates, logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def ranks_from_env() -> Ranks:
    """This process's ranks as torchrun set them; a single process when WORLD_SIZE is unset or 1."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as e:
        raise TrainerError(f"torchrun's RANK / WORLD_SIZE / LOCAL_RANK are not integers ({e})") from None
    return Ranks(rank, world, local)


def init_process_group(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the job's process group (NCCL on CUDA, gloo on the CPU); returns this rank's device."""
    if not ranks.distributed:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def barrier(ranks: Ranks) -> None:
    """Wait for every rank (rank 0's files are written before the others go on)."""
    if ranks.distributed:
        dist.barrier()


def close(ranks: Ranks) -> None:
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()
