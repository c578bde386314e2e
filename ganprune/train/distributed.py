"""Data-parallel training under ``torchrun`` without losing step-exact resumption: rank/world from the
environment, gradient averaging, rank 0's buffers, and each rank's slice of every global batch."""
from __future__ import annotations

import os

import torch
from torch.utils.data import Sampler

from ganprune.core.device import pick_device
from ganprune.train.common import StepBatches


class RankSlice(Sampler):
    """This rank's share of each global batch: DDP without losing step-exact resumption."""

    def __init__(self, batches: StepBatches, rank: int, per_rank: int):
        self.batches, self.rank, self.per_rank = batches, rank, per_rank

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            yield batch[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]


class Dist:
    """Rank/world from torchrun's environment; a process group started here is closed here."""

    def __init__(self, device_pref: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank, self.local_rank, self.owned = 0, 0, False
        if self.world <= 1:
            self.world = 1
            return
        import torch.distributed as dist
        self.dist = dist
        self.local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
        cuda = torch.cuda.is_available() and str(device_pref).lower() != "cpu"
        if cuda:
            torch.cuda.set_device(self.local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
            self.owned = True
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    @property
    def active(self) -> bool:
        return self.world > 1

    def device(self, pref: str) -> torch.device:
        dev = pick_device(pref)
        if self.active and dev.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return dev

    def average_grads(self, params: list[torch.Tensor]) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        if not self.active or not grads:
            return
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        self.dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def sync_from_rank0(self, tensors: list[torch.Tensor]) -> None:
        if self.active:
            for t in tensors:
                self.dist.broadcast(t.data, 0)

    def any(self, flag: bool, device) -> bool:
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return bool(t.item())

    def close(self):
        if self.owned:
            self.dist.destroy_process_group()
