"""Data-parallel training with torch.distributed (DESIGN.md, "Scale-out": torchrun for training).

Under ``torchrun --nproc_per_node N`` every process trains one replica (DistributedDataParallel;
gloo on CPU, NCCL on GPU). All ranks draw the same seeded permutation of the training set each
epoch and split every global batch of ``batch_size`` samples into contiguous shares, one per rank,
so the global batch is the single-process batch; the trainer scales each rank's loss so that the
averaged gradient equals the single-process gradient. Sums (losses, counts) are reduced across
ranks; only rank 0 writes logs, checkpoints and the model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from cropstar.errors import InputError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0, the one that writes files."""
        return self.rank == 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> World:
        """The world torchrun describes in ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (absent: one process)."""
        env = os.environ if environ is None else environ
        try:
            world = cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))
        except ValueError as error:
            raise InputError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {error}") from None
        if not 0 <= world.rank < world.world_size:
            raise InputError(
                f"RANK {world.rank} outside 0…{world.world_size - 1} (WORLD_SIZE {world.world_size})"
            )
        return world


def start(world: World, device: torch.device) -> bool:
    """Join the process group (NCCL for CUDA, gloo otherwise; address and port from torchrun's
    ``MASTER_ADDR`` / ``MASTER_PORT``). Returns whether this call created it."""
    if not world.is_distributed or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=world.rank, world_size=world.world_size)
    return True


def stop(created: bool) -> None:
    """Leave the process group that :func:`start` created."""
    if created and dist.is_initialized():
        dist.destroy_process_group()


def per_rank_batch(batch_size: int, world: World) -> int:
    """The share of one rank; the global batch must split evenly."""
    if batch_size % world.world_size:
        raise InputError(
            f"batch_size {batch_size} (the global batch) must be divisible by the {world.world_size} processes"
        )
    return batch_size // world.world_size


def rank_share(indices: Tensor, world: World) -> Tensor:
    """This rank's contiguous share of ``indices`` (shares differ by at most one; may be empty)."""
    return torch.tensor_split(indices, world.world_size)[world.rank]


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when distributed, else itself."""
    if not world.is_distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_sum(values: Tensor, world: World) -> Tensor:
    """``values`` summed over all ranks (a new tensor; unchanged in one process)."""
    values = values.clone()
    if world.is_distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier(world: World) -> None:
    if world.is_distributed:
        dist.barrier()
