"""The search's last word: its best few candidates, each distilled briefly from where fine-tuning starts, scored again.

Why: a candidate's score before any training says little about what fine-tuning makes of it when the
candidates are close (measured on ``bench_rank.py``'s teacher, 12 random width sets at 25% of G's MACs,
300-step supernet: slice density score vs PSNR after fine-tuning from the slice, Kendall τ 0.12, its pick
28.0 dB against a best of 29.6), while a few steps of distillation separate them (60 steps of L1 to the
teacher from each slice, then the density score: τ 0.67, its pick the best of the 12; at 10%, where the slice
score ranks well already, τ 0.36 vs 0.55). Distilling every candidate would cost minutes per round, so only
the ``k`` best-scored distinct pairs of a finished search (its fill row included) and uniform pruning at the
same budgets are distilled — identically: same steps, same batches in the same order — and scored again by the
same objective; the best of them is the winner. Fine-tuning then starts from the winner's slice as usual (the
distilled copies are only used to score).

Off by default (``finalists`` 0): the search's winners measured no better with it than without (25% G MACs
29.3 vs 29.6 dB, 10% 26.9 vs 27.4; README, rank benchmark), although it ranks random candidates better.
"""
from __future__ import annotations


import torch
from torch import nn

from ganprune.core.errors import UserError

DEFAULT_FINALISTS, DEFAULT_STEPS = 4, 60


def finalist_rows(rows: list[dict], k: int) -> list[dict]:
    """The ``k`` best-scored feasible rows with distinct (G widths, D widths), best first, and the uniform row
    (the baseline every search must beat) after them when it is not one of those."""
    seen, out = set(), []
    feasible = [r for r in rows if r.get("feasible") is True and not r.get("error")]
    for row in sorted(feasible, key=lambda r: (r["score"], r["round"])):
        key = (row["g_widths"], row["d_widths"])
        if key not in seen:
            seen.add(key)
            out.append(row)
    out = out[:k]
    uniform = [r for r in feasible if r.get("phase") == "uniform"]
    if uniform and all((r["g_widths"], r["d_widths"]) != (uniform[-1]["g_widths"], uniform[-1]["d_widths"])
                       for r in out):
        out.append(uniform[-1])
    return out


class Distiller:
    """``distiller(g)`` trains ``g`` in place for ``steps`` Adam steps of L1 to the teacher's output on batches
    of ``data`` (items with ``"A"``, a search split); every call sees the same batches in the same order."""

    def __init__(self, teacher_G: nn.Module, data, steps: int = DEFAULT_STEPS, batch_size: int = 4,
                 lr: float = 2e-4, seed: int = 0):
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise UserError(f"finalist_steps: expected an integer >= 1, got {steps!r}")
        if len(data) == 0:
            raise UserError("finalists: no training images in the search split")
        batch_size = min(batch_size, len(data))   # a tiny but valid data set: every batch is the whole set
        from ganprune.train.common import SeededItems, StepBatches, mix
        self.teacher, self.steps, self.lr = teacher_G.eval(), steps, lr
        self.items = SeededItems(data)   # item (index, seed): its augmentation is a function of the seed
        self.keys = list(StepBatches(len(data), batch_size, mix(seed, 3), 0, steps))

    def __call__(self, g: nn.Module) -> nn.Module:
        device = next(g.parameters()).device
        g.train().requires_grad_(True)
        opt = torch.optim.Adam(g.parameters(), lr=self.lr, betas=(0.5, 0.999))
        for keys in self.keys:
            a = torch.stack([self.items[key]["A"] for key in keys]).to(device)
            with torch.no_grad():
                target = self.teacher(a)
            loss = (g(a) - target).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return g.requires_grad_(False).eval()

