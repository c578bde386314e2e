"""Score a (G widths, D widths) candidate without training.

A candidate pair is instantiated by weight inheritance (``ganprune.pruning.physical`` keeps the most important
channels of the teacher — or, with a trained ``supernet``, of the supernet's shared weights, so the
candidate is its slice), BatchNorm statistics of a *pruned* network are re-estimated on the calibration
batches (pruning shifts them; an unpruned network keeps the teacher's own, so the full widths reproduce
the teacher exactly and score 0, the best possible), and three things are measured against cached
teacher quantities:

* **density** — the local-density discrepancy of the pruned G to the teacher (``LocalDensityObjective``),
  plus an optional L1 to the teacher's output;
* **balance** — the adversarial equilibrium: the pruned D's real-vs-fake gap on pruned-G outputs compared
  with the teacher D's gap on teacher-G outputs. Pruning only G (or only D) tilts the game; this is why D
  gets an agent of its own;
* **d_fidelity** — how far the pruned D's judgements drift from the teacher D's on the same pairs.

Calibration data must come from a search split: asking for ``val`` or ``test`` is refused, so that search
and selection never see the evaluation images.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ganprune.core.errors import UserError
from ganprune.models.registry import d_input

EVALUATION_SPLITS = ("val", "test", "testA", "testB", "valA", "valB")


def guard_search_split(phase: str) -> None:
    """Search and selection never see the evaluation split."""
    if phase in EVALUATION_SPLITS:
        raise UserError(f"calibration split {phase!r} is an evaluation split; search must use a split the "
                        "evaluation never sees (e.g. 'train')")


def calibration_batches(dataroot, phase="train", n_images=16, batch_size=8, mode="aligned",
                        direction="AtoB", size=None) -> list[dict]:
    """The first ``n_images`` of ``phase`` with the deterministic evaluation transform, in batches.

    The first n, not n spread over the split: spread images were tried (a split sorted by name keeps one
    photo's crops together) and ranked candidates no better on average over both budgets and supernet lengths
    of the rank benchmark, while the default pipeline's 10% winner got worse (docs/benchmarks.md)."""
    guard_search_split(phase)
    from ganprune.data.datasets import build_dataset
    dataset = build_dataset(dataroot, mode=mode, phase=phase, direction=direction, load_size=size,
                            crop_size=size, flip=False)
    return item_batches([dataset[i] for i in range(min(n_images, len(dataset)))], batch_size, phase)


def item_batches(items: list[dict], batch_size: int, phase: str) -> list[dict]:
    """Dataset items stacked into the batches an evaluator scores (``{"A", "B", "phase"}``), in order: for
    images chosen another way than ``calibration_batches``' first n. ``phase`` names their split (an
    evaluation split is refused unless the evaluator is built with ``allow_evaluation_split``)."""
    return [{"A": torch.stack([it["A"] for it in items[i:i + batch_size]]),
             "B": torch.stack([it["B"] for it in items[i:i + batch_size]]), "phase": phase}
            for i in range(0, len(items), batch_size)]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, inputs: list[torch.Tensor]) -> nn.Module:
    """Re-estimate BatchNorm running statistics as a cumulative average over ``inputs``.

    Dropout stays off meanwhile: the statistics are those of the deterministic net that is scored, and
    the global RNG is not drawn from (a score must not depend on how many candidates came before it)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return model
    saved = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    saved_modes = [(m, m.training) for m in model.modules()]
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    for x in inputs:
        model(x)
    for m, momentum in saved.items():
        m.momentum = momentum
    for m, mode in saved_modes:
        m.training = mode
    return model


@dataclass
class TeacherCache:
    """Everything about the teacher pair that does not depend on the candidate, computed once."""
    inputs: list[torch.Tensor]
    targets: list[torch.Tensor]
    outputs: list[torch.Tensor]
    density_refs: list
    d_real: list[torch.Tensor] = field(default_factory=list)   # sigmoid(D_T(x, y_real))
    d_fake: list[torch.Tensor] = field(default_factory=list)   # sigmoid(D_T(x, G_T(x)))

    @property
    def gap(self) -> float:
        return float(torch.cat(self.d_real).mean() - torch.cat(self.d_fake).mean())


class CandidateEvaluator:
    """Scores candidate (G widths, D widths) pairs; see the module docstring for the terms.

    ``score_g`` = density + l1_weight·l1 + balance_weight·balance (what the G-agent minimises);
    ``score_d`` = balance + d_fidelity (what the D-agent minimises); ``score`` = score_g + score_d.
    Without a teacher D (``teacher_D=None``, ``d_space=None``: a generator-only checkpoint) only G is
    scored: balance, d_fidelity and score_d are 0, and ``build_pair`` returns ``(G, None)``.
    """

    def __init__(self, teacher_G: nn.Module, teacher_D: nn.Module, g_space, d_space, batches: list[dict],
                 objective, conditional_D: bool = True, l1_weight: float = 0.0, balance_weight: float = 1.0,
                 recalibrate_bn: bool = True, importance: str = "l2", device=None,
                 allow_evaluation_split: bool = False, supernet=None):
        if not batches:
            raise UserError("calibration set is empty: need at least one batch of search-split images")
        for batch in batches:  # batches from calibration_batches() say which split they came from
            if not allow_evaluation_split:  # only to *report* a finished search's winner on held-out data
                guard_search_split(batch.get("phase", "train"))
        self.device = torch.device(device or "cpu")
        self.teacher_G = teacher_G.to(self.device).eval()
        self.teacher_D = teacher_D.to(self.device).eval() if teacher_D is not None else None
        self.g_space, self.d_space = g_space, d_space
        self.objective = objective
        self.conditional_D = conditional_D
        self.l1_weight, self.balance_weight = l1_weight, balance_weight
        self.recalibrate_bn, self.importance = recalibrate_bn, importance
        x0 = batches[0]["A"][:1].to(self.device)
        self.g_example = x0
        self.d_example = (d_input(x0, batches[0]["B"][:1].to(self.device), conditional_D)
                          if self.teacher_D is not None else None)
        self.cache = self._teacher_cache(batches)
        from ganprune.pruning.physical import channel_ranking
        self.g_ranking = channel_ranking(self.teacher_G, self.g_example, importance)
        self.d_ranking = (channel_ranking(self.teacher_D, self.d_example, importance)
                          if self.teacher_D is not None else None)
        self.supernet = None
        if supernet is not None:
            self.use_supernet(supernet)
        self.refine = None   # g -> g applied to each built G before BN re-estimation (``ganprune.search.finalists``)
        self.evaluations = 0

    def use_supernet(self, supernet) -> None:
        """Score G candidates as slices of ``supernet`` (trained with this evaluator's channel ranking)."""
        if supernet.ranking != self.g_ranking:
            raise UserError("supernet: trained with another channel ranking than this evaluator's; train it "
                            "with ranking=evaluator.g_ranking")
        self.supernet = supernet

    @torch.no_grad()
    def _teacher_cache(self, batches) -> TeacherCache:
        inputs = [b["A"].to(self.device) for b in batches]
        targets = [b["B"].to(self.device) for b in batches]
        outputs = [self.teacher_G(x) for x in inputs]
        refs = [self.objective.reference(x, index=i) for i, x in enumerate(inputs)]
        cache = TeacherCache(inputs, targets, outputs, refs)
        for x, y, fake in zip(inputs, targets, outputs) if self.teacher_D is not None else ():
            cache.d_real.append(torch.sigmoid(self.teacher_D(d_input(x, y, self.conditional_D))))
            cache.d_fake.append(torch.sigmoid(self.teacher_D(d_input(x, fake, self.conditional_D))))
        return cache

    def build_pair(self, g_widths, d_widths) -> tuple[nn.Module, nn.Module]:
        """The candidate networks: teacher weights inherited by importance (ranked once on the dense
        teacher, so every candidate of a search keeps a nested subset of the same channels), BN re-estimated."""
        from ganprune.pruning.physical import prune
        g_source = self.supernet.net if self.supernet is not None else self.teacher_G
        g = prune(g_source, g_widths, self.g_example, ranking=self.g_ranking).to(self.device)
        g_changed = self.supernet is not None or self.g_space.validate(g_widths) != self.g_space.full_widths()
        if self.refine is not None:
            with torch.enable_grad():
                g = self.refine(g)
            g_changed = True
        if self.recalibrate_bn and g_changed:
            recalibrate_batchnorm(g, self.cache.inputs)
        if self.teacher_D is None:
            return g.eval(), None
        d = prune(self.teacher_D, d_widths, self.d_example, ranking=self.d_ranking).to(self.device)
        d_changed = self.d_space.validate(d_widths) != self.d_space.full_widths()
        if self.recalibrate_bn and d_changed:
            with torch.no_grad():
                fakes = [g.eval()(x) for x in self.cache.inputs]
            recalibrate_batchnorm(d, [d_input(x, y, self.conditional_D) for x, y in zip(self.cache.inputs, self.cache.targets)]
                                  + [d_input(x, f, self.conditional_D) for x, f in zip(self.cache.inputs, fakes)])
        return g.eval(), d.eval()

    @torch.no_grad()
    def score_pair(self, g_widths: dict, d_widths: dict) -> dict:
        """Score one candidate pair (no training): its metrics as plain floats/ints, ready for a history row."""
        start = time.perf_counter()
        g_widths = self.g_space.validate(g_widths)
        d_widths = self.d_space.validate(d_widths) if self.d_space is not None else {}
        g, d = self.build_pair(g_widths, d_widths)
        c = self.cache
        density = sum(float(self.objective(g, reference=ref)) for ref in c.density_refs) / len(c.density_refs)
        l1 = mse = d_real = d_fake = d_drift = 0.0
        n = 0
        for i, (x, y_t) in enumerate(zip(c.inputs, c.outputs)):
            fake = g(x)
            k = x.shape[0]
            l1 += float((fake - y_t).abs().mean()) * k
            mse += float(((fake - y_t) ** 2).mean()) * k
            n += k
            if d is None:
                continue
            y, t_real, t_fake = c.targets[i], c.d_real[i], c.d_fake[i]
            s_real = torch.sigmoid(d(d_input(x, y, self.conditional_D)))
            s_fake = torch.sigmoid(d(d_input(x, fake, self.conditional_D)))
            d_real += float(s_real.mean()) * k
            d_fake += float(s_fake.mean()) * k
            # D fidelity on identical inputs: the teacher pair's real and teacher-fake images.
            s_teacher_fake = torch.sigmoid(d(d_input(x, y_t, self.conditional_D)))
            d_drift += float(((s_real - t_real).abs().mean() + (s_teacher_fake - t_fake).abs().mean()) / 2) * k
        l1, mse, d_real, d_fake, d_drift = l1 / n, mse / n, d_real / n, d_fake / n, d_drift / n
        balance = abs((d_real - d_fake) - c.gap) if d is not None else 0.0
        score_g = density + self.l1_weight * l1 + self.balance_weight * balance
        score_d = balance + d_drift
        self.evaluations += 1
        # psnr_pooled: PSNR to the teacher's output from the MSE pooled over every calibration pixel, images
        # in [-1, 1] (data range 2); not the report's PSNR vs teacher, a mean of per-image PSNRs
        psnr = 10 * math.log10(4.0 / mse) if mse > 0 else math.inf
        return {"density": density, "l1": l1, "psnr_pooled": psnr, "balance": balance, "d_fidelity": d_drift,
                "score_g": score_g, "score_d": score_d, "score": score_g + score_d,
                "g_macs": int(self.g_space.macs(g_widths)),
                "d_macs": int(self.d_space.macs(d_widths)) if self.d_space is not None else 0,
                "seconds": time.perf_counter() - start}

    @torch.no_grad()
    def forward_seconds(self, model: nn.Module | None = None) -> float:
        """Time of one G forward over the perturbed calibration inputs the objective scores (B·m images):
        the unit in which candidate cost is reported."""
        model = (model or self.teacher_G).eval()
        start = time.perf_counter()
        for i, x in enumerate(self.cache.inputs):
            xs = self.objective.perturb(x, index=i)
            model(xs.flatten(0, 1))
        return time.perf_counter() - start
