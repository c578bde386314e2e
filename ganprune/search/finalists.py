"""The search's last word: its best few candidates, each distilled briefly from where fine-tuning starts, scored again.

Why: a candidate's score before any training says little about what fine-tuning makes of it when the
candidates are close, while a few steps of distillation separate them (``bench_rank.py``'s rank study:
docs/benchmarks.md). Distilling every candidate would cost minutes per round, so only
the ``k`` best-scored distinct pairs of a finished search (its fill row included) and uniform pruning at the
same budgets are distilled — identically: same steps, same batches in the same order — and scored again by the
same objective; the best of them is the winner. Fine-tuning then starts from the winner's slice as usual (the
distilled copies are only used to score).

Off by default (``finalists`` 0): the search's winners measured no better with it than without, although it
ranks random candidates better (docs/benchmarks.md).
"""
from __future__ import annotations

import torch
from torch import nn

from ganprune.core.errors import UserError
from ganprune.train.recipe import Recipe


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


class Distill(Recipe):
    """L1 from the student's output to the teacher's, G alone: what each finalist is trained with."""

    name = "distill"
    uses_D = False

    def forward(self, batch: dict) -> dict:
        return {"A": batch["A"], "fake": self.student_G(batch["A"])}

    def generator_loss(self, out: dict):
        l1 = self.l1(out["fake"], self.teacher_output(out["A"]))
        return l1, {"G_L1": l1.detach()}


class Distiller:
    """``distiller(g)`` trains ``g`` in place for ``steps`` Adam steps (constant ``lr``) of L1 to the teacher's
    output on batches of ``data`` (items with ``"A"``, a search split), on the trainer (``Distill``); every
    call sees the same batches in the same order."""

    def __init__(self, teacher_G: nn.Module, data, steps: int, batch_size: int = 4,
                 lr: float = 2e-4, seed: int = 0):
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise UserError(f"finalist_steps: expected an integer >= 1, got {steps!r}")
        if len(data) == 0:
            raise UserError("finalists: no training images in the search split")
        batch_size = min(batch_size, len(data))   # a tiny but valid data set: every batch is the whole set
        self.teacher, self.data = teacher_G.eval(), data
        self.schedule = {"steps": steps, "batch_size": batch_size, "lr": lr, "decay_from": 1.0, "seed": seed,
                         "save_every": steps}

    def __call__(self, g: nn.Module) -> nn.Module:
        from ganprune.train.trainer import finetune
        device = next(g.parameters()).device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):   # the caller's RNG stays
            finetune(g, None, self.teacher, None, self.data, recipe=Distill, device=str(device), progress=False,
                     **self.schedule)
        return g.requires_grad_(False).eval()
