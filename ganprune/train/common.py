"""What every training run here shares: step-exact data order, the LR schedule, argument checks, shape
checks, the L1 evaluation, CPU state copies and the CSV log. Teacher training (``ganprune.train.teacher``)
and fine-tuning (``ganprune.train.trainer``) both use these.

Resuming is exact on the CPU because the data order and every sample's augmentation are functions of
(seed, step): each item is drawn under its own seed, whatever process loads it, and the LR is a pure
function of the step and the target steps.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from ganprune.core.device import autocast, to_channels_last
from ganprune.core.errors import UserError
from ganprune.core.io import atomic_path


def mix(*numbers: int) -> int:
    """A reproducible 63-bit seed from integers (Python's ``hash`` of ints is stable, but spell it out)."""
    h = 0x2545F4914F6CDD1D
    for n in numbers:
        h = ((h ^ (int(n) & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3) & 0x7FFFFFFFFFFFFFFF
    return h


class SeededItems(Dataset):
    """Wraps a dataset so that item ``(index, seed)`` is drawn with all RNGs seeded by ``seed`` and
    the caller's RNG states left untouched: random crops/flips become a function of the seed alone."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


class StepBatches(Sampler):
    """Batches for steps ``start..stop-1``: a fresh seeded permutation per epoch (drop-last), and a
    seed per sample, both computed from the step number so a resumed run sees the same batches."""

    def __init__(self, n_items: int, batch_size: int, seed: int, start: int, stop: int):
        self.n, self.bs, self.seed, self.start, self.stop = n_items, batch_size, seed, start, stop
        self.per_epoch = n_items // batch_size

    def __len__(self):
        return max(0, self.stop - self.start)

    def __iter__(self):
        epoch, perm = None, None
        for step in range(self.start, self.stop):
            e, j = divmod(step, self.per_epoch)
            if e != epoch:
                epoch = e
                perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(mix(self.seed, 1, e))).tolist()
            yield [(perm[k], mix(self.seed, 2, step, k)) for k in range(j * self.bs, (j + 1) * self.bs)]


def step_loader(dataset, batch_sampler, seed: int, start: int, num_workers: int = 0, pin_memory: bool = False):
    """A DataLoader of seeded items whose own generator keeps iterator creation off the global RNG."""
    return DataLoader(SeededItems(dataset), batch_sampler=batch_sampler, num_workers=num_workers,
                      pin_memory=pin_memory, generator=torch.Generator().manual_seed(mix(seed, 3, start)))


def lr_factor(step: int, steps: int, decay_from: float) -> float:
    """1 until ``decay_from·steps``, then linear towards 0 at ``steps`` (pix2pix n_epochs/n_epochs_decay)."""
    start = int(round(decay_from * steps))
    if step < start or steps <= start:
        return 1.0
    return (steps - step) / (steps - start)


def check_schedule(steps, batch_size, lr, decay_from, beta1=0.5, **counts) -> None:
    """The training arguments every run takes (``counts``: other whole numbers as ``name=(value, low)``)."""
    checks = {"steps": (steps, 1), "batch_size": (batch_size, 1), **counts}
    for name, (value, low) in checks.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < low:
            raise UserError(f"{name}: expected an integer >= {low} (got {value!r})")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 or lr == float("inf"):
        raise UserError(f"lr: expected a positive learning rate (got {lr!r})")
    if not 0.0 <= beta1 < 1.0:
        raise UserError(f"beta1: expected a value in [0, 1) (got {beta1!r})")
    if not 0.0 <= decay_from <= 1.0:
        raise UserError(f"decay_from: expected a fraction in [0, 1] (got {decay_from!r})")


def check_shapes(G: nn.Module, item: dict, arch) -> None:
    """A U-Net needs sides divisible by 2**downsamplings; say so instead of a deep shape error (and, where the
    item has a ``B``, that G's output has its shape)."""
    a, b = item["A"], item.get("B")
    try:
        with torch.no_grad():
            G.eval()
            out = G(a[None].to(next(G.parameters()).device))
    except RuntimeError as exc:
        raise UserError(f"generator {arch!r} cannot take {tuple(a.shape[1:])} images ({str(exc).splitlines()[0]}); "
                        "choose an arch for this size or set load_size/crop_size") from None
    finally:
        G.train()
    if b is not None and tuple(out.shape[1:]) != tuple(b.shape):
        raise UserError(f"generator {arch!r} maps {tuple(a.shape)} to {tuple(out.shape[1:])}, but B is "
                        f"{tuple(b.shape)}; choose an arch for this image size")


@torch.no_grad()
def l1_scores(G: nn.Module, dataset, device=None, precision: str = "fp32", batch_size: int = 16, *,
              reference: nn.Module | None = None, paired: bool = True, num_workers: int = 0) -> dict:
    """Mean |G(A) − B| over every pixel (``val_L1``, paired data) and, with a ``reference`` net, mean
    |G(A) − reference(A)| (``val_L1_student_to_teacher``); G in eval mode, the global RNG untouched. Reported
    only, never used to choose weights."""
    device = device or next(G.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(0))
    was_training = G.training
    G.eval()
    sums, count = [0.0, 0.0], 0
    try:
        for batch in loader:
            a = to_channels_last(batch["A"].to(device, non_blocking=True))
            with autocast(device, precision):
                fake = G(a).float()
                ref = reference(a).float() if reference is not None else None
            if paired:
                sums[0] += (fake - batch["B"].to(device, non_blocking=True)).abs().sum().item()
            if ref is not None:
                sums[1] += (fake - ref).abs().sum().item()
            count += fake.numel()
    finally:
        G.train(was_training)
    out = {"val_L1": sums[0] / max(count, 1)} if paired else {}
    if reference is not None:
        out["val_L1_student_to_teacher"] = sums[1] / max(count, 1)
    return out


def cpu_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """Plain, contiguous CPU tensors: the reference checkpoint format, whatever layout trained it."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}


def write_log(path, rows: list[dict], columns: list[str] | None = None) -> None:
    """The training log as CSV, atomically (``columns``: fixed ones, else every key in order of appearance)."""
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(Path(path)) as tmp:
        pd.DataFrame(rows, columns=columns).to_csv(tmp, index=False)
