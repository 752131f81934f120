"""torchrun scale-out: the process environment, the process group, and the collectives the search uses.

Under ``torchrun --nproc_per_node=N`` (WORLD_SIZE > 1) the weights are wrapped in
DistributedDataParallel and every split goes through a DistributedSampler; theta stays outside DDP:
its gradient is averaged with :func:`average_grad` before every Adam step and theta is broadcast
from rank 0 after it (:func:`broadcast_`), so all ranks hold bit-identical theta. Backend gloo on
CPU, NCCL on CUDA (device ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler


@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(prefer_cuda: bool = True) -> DistEnv:
    """Read torchrun's environment; init the process group (nccl on GPU, gloo on CPU) if WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = prefer_cuda and torch.cuda.is_available()
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return DistEnv(rank, world, local, device)


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: list[float], env: DistEnv) -> list[float]:
    """Element-wise sum over the ranks (identity in one process)."""
    if not env.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return t.tolist()


def average_grad(g: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed:
        dist.all_reduce(g)
        g /= env.world
    return g


def broadcast_(t: torch.Tensor, env: DistEnv) -> None:
    """Make ``t`` identical on every rank (rank 0's value)."""
    if env.distributed:
        dist.broadcast(t, 0)


def same_on_all_ranks(t: torch.Tensor, env: DistEnv) -> bool:
    if not env.distributed:
        return True
    ref = t.clone()
    dist.broadcast(ref, 0)
    return bool(torch.equal(ref, t))


def loader(ds, batch: int, env: DistEnv, seed: int, epoch: int, shuffle: bool = True) -> DataLoader:
    """Seeded per epoch (a resumed run draws what the uninterrupted one did); sharded under torchrun.
    A last batch of one image is dropped (a different image each shuffled epoch): BatchNorm in train
    mode cannot normalise a single image (``--subset 2005`` left 401 theta images, 25 batches of 16
    and one of 1)."""
    if env.distributed:
        sampler = DistributedSampler(ds, num_replicas=env.world, rank=env.rank, shuffle=shuffle, seed=seed)
        sampler.set_epoch(epoch)
        return DataLoader(ds, batch_size=batch, sampler=sampler, drop_last=_lone_last(len(sampler), batch))
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return DataLoader(ds, batch_size=batch, shuffle=shuffle, generator=g, drop_last=_lone_last(len(ds), batch))


def _lone_last(n: int, batch: int) -> bool:
    return n > 1 and n % batch == 1


__all__ = ["DistEnv", "all_sum", "average_grad", "broadcast_", "cleanup_distributed", "loader",
           "same_on_all_ranks", "setup_distributed"]
