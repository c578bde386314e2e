"""The local density-preserving objective: does the student keep the teacher's local sample density?

Seed 004 (Ganjdanesh et al., AAAI 2024) asks a pruned generator to preserve the density structure of
the original generator's outputs in local neighbourhoods, "resembling kernel density estimation". Made
concrete here (see /work/shared/DESIGN.md §3):

1. Neighbourhood. For each input x of a calibration batch, ``m`` perturbed copies x̃_0..x̃_{m-1} (x̃_0 is
   x itself, so every neighbourhood is anchored at the teacher's real output; the others get input
   noise, a small reflect-padded shift, and/or the generator's own dropout noise). The teacher's outputs
   G_T(x̃_j) are m samples of the teacher's local output distribution around G_T(x).
2. Features. Every output is embedded in a fixed space (``EMBEDDINGS``: pooled pixels, frozen teacher-D
   features, FID-Inception features), the same map for teacher and student.
3. Kernel. A Gaussian kernel k(a, b) = exp(-‖a - b‖² / 2h²) per neighbourhood, h from the median
   heuristic on the *teacher* samples (detached), so both sides are measured with the same kernel and
   the student cannot game the score by moving the bandwidth. The MMD averages the kernel over
   bandwidths s·h (default s = 1, 4, 16, 64): local neighbourhoods are narrow, and a single narrow
   kernel saturates for the far-off outputs of a freshly pruned student (see LocalDensityObjective).
4. Discrepancy between the teacher's and the student's local KDEs on the same perturbed inputs:
   ``mmd`` (squared MMD between the two sample sets, i.e. the squared L2 distance between the two KDEs,
   up to a constant factor, when those use bandwidth h/√2), ``nll`` (cross-entropy of the student's
   samples under the teacher's KDE minus the teacher's own, both leave-one-out), or ``both``.

All kernel math is batched over neighbourhoods ([B, m, d] tensors), done in log space where sums of
exponentials appear, and differentiable in the student, so the same object scores pruning candidates
(teacher side computed once, ``reference``) and serves as the ``density`` fine-tuning loss. The kernel
math lives in ``ganprune.scoring.kernels``, the embeddings in ``ganprune.scoring.embeddings``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ganprune.scoring.embeddings import EMBEDDINGS, build_embedding, register_embedding
from ganprune.core.errors import UserError
from ganprune.scoring.kernels import gaussian_mmd2, kde_log_density, median_bandwidth, paired_nll_gap

# Re-exported: the kernel functions and the embedding registry were defined here first.
__all__ = ["LocalDensityObjective", "DensityReference", "EMBEDDINGS", "register_embedding", "gaussian_mmd2",
           "kde_log_density", "median_bandwidth", "paired_nll_gap", "PERTURBATIONS", "DISCREPANCIES"]

PERTURBATIONS = ("noise", "jitter", "dropout")
DISCREPANCIES = ("mmd", "nll", "both")
MMD_ESTIMATORS = ("biased", "unbiased")

# --------------------------------------------------------------------------- the objective


def _stream_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from (seed, stream, ...): nearby seeds give unrelated streams."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


@contextlib.contextmanager
def _measure_mode(net: nn.Module, dropout: bool):
    """Eval mode (BatchNorm uses running stats, so a score never depends on batch-mates), Dropout
    layers in train mode when dropout noise is a perturbation; every module's flag restored after."""
    saved = [(mod, mod.training) for mod in net.modules()]
    net.eval()
    if dropout:
        for mod in net.modules():
            if isinstance(mod, nn.modules.dropout._DropoutNd):
                mod.train()
    try:
        yield
    finally:
        for mod, flag in saved:
            mod.training = flag


@contextlib.contextmanager
def _seeded_global_rng(seed: int, device: torch.device, enabled: bool):
    """Dropout draws from the global RNG: fork it, seed it, restore it, so callers' streams are untouched."""
    if not enabled:
        yield
        return
    cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


@dataclass
class DensityReference:
    """The teacher side of the objective for one calibration batch, computed once (the teacher is fixed).

    Stores the clean inputs, not the B·m perturbed copies: those are regenerated from (seed, index)
    on demand, bit for bit, which keeps a cached calibration set m times smaller.
    """
    x: torch.Tensor            # [B, C, H, W] clean inputs, on the objective's device
    index: int                 # which perturbation stream (one per calibration batch)
    features: torch.Tensor     # [B, m, d] teacher embeddings (float32, no grad)
    bandwidth: torch.Tensor    # [B] kernel bandwidth per neighbourhood

    @property
    def batch_size(self) -> int:
        return self.features.shape[0]

    @property
    def m(self) -> int:
        return self.features.shape[1]


class LocalDensityObjective:
    """Score how well a student generator preserves the teacher's local output densities (lower = better).

    Defaults and why (the measurements behind them: docs/benchmarks.md, objective defaults):
      * ``perturbations=("noise",)``, ``noise_std=0.05`` (inputs in [-1, 1]): x̃ stays "the same input",
        and the teacher's neighbourhood stays local: its spread is a small fraction of the distance
        between outputs of different inputs. A 1–2 px ``jitter`` already moves the pooled output a good
        part of the way to a different input's, so it measures shift equivariance more than local
        density: opt-in, as is ``dropout`` (pix2pix's own noise source, only for checkpoints built
        with dropout).
      * ``m=8``: 28 pairs for the median bandwidth and a usable KDE, at one student forward over 8·B
        images per score; the score is steady across seeds at m=8 and ranks like m=4 and m=16. The
        biased MMD carries a 1/m offset, so compare scores only at equal m.
      * ``bandwidth="median"`` per neighbourhood on the teacher samples (see module docstring), times
        ``bandwidth_scales=(1, 4, 16, 64)``: with local neighbourhoods a pruned student lands tens of
        bandwidths away, where a single kernel is 0 for every cross pair: the MMD saturates (its
        ranking is non-monotone) and its gradient vanishes. The mixture reaches out to ~64 h, about the
        between-input distance, ranks students better and, as a loss, keeps a useful gradient.
        A float fixes h in embedding units instead.
      * ``discrepancy="mmd"`` (biased estimator: ≥ 0, exactly 0 for an unchanged student) — bounded in
        [0, 2] and sensitive to lost spread; ``nll`` grows like distance²/2h² without bound and ignores
        collapse; ``both`` adds ``nll_weight`` × NLL gap to the MMD.
      * ``embedding="pixels"`` (16×16 average pool): cheap, needs nothing but the generator;
        ``teacher_d`` adds structure-aware features for about one D forward per image (``teacher_D``;
        ``conditional_D`` says whether it sees cat(x̃, G(x̃)) or G(x̃) alone).
      * ``chunk_size=8`` neighbourhoods (64 images) per forward bounds activation memory when scoring.
    On CUDA the generator and embedding forwards run under float16 autocast (``amp=None`` → on for
    CUDA); kernel math is always float32.
    """

    def __init__(self, teacher_G, embedding="pixels", m=8, perturbations=("noise",), noise_std=0.05,
                 jitter_px=2, bandwidth="median", discrepancy="mmd", nll_weight=1.0, teacher_D=None, seed=0,
                 device=None, chunk_size=8, mmd_estimator="biased", bandwidth_scales=(1, 4, 16, 64), amp=None,
                 conditional_D: bool = True, **embedding_kwargs):
        if not isinstance(teacher_G, nn.Module):
            raise UserError(f"teacher_G: expected a torch.nn.Module, got {type(teacher_G).__name__}")
        if isinstance(perturbations, str):
            perturbations = (perturbations,)
        perturbations = tuple(perturbations)
        bad = [p for p in perturbations if p not in PERTURBATIONS]
        if bad or not perturbations:
            raise UserError(f"perturbations: expected a non-empty subset of {', '.join(PERTURBATIONS)}, got {list(perturbations)}")
        if isinstance(m, bool) or not isinstance(m, int) or m < 2:
            raise UserError(f"m: expected an integer >= 2 (a neighbourhood needs at least two samples), got {m!r}")
        if "noise" in perturbations and not (isinstance(noise_std, (int, float)) and noise_std > 0):
            raise UserError(f"noise_std: expected a number > 0 when 'noise' is a perturbation, got {noise_std!r}")
        if "jitter" in perturbations and (isinstance(jitter_px, bool) or not isinstance(jitter_px, int) or jitter_px < 1):
            raise UserError(f"jitter_px: expected an integer >= 1 when 'jitter' is a perturbation, got {jitter_px!r}")
        if "dropout" in perturbations and not any(
                isinstance(mod, nn.modules.dropout._DropoutNd) and mod.p > 0 for mod in teacher_G.modules()):
            raise UserError("perturbations: 'dropout' needs a generator with Dropout layers (built with dropout=True)")
        if not (bandwidth == "median" or (isinstance(bandwidth, (int, float)) and not isinstance(bandwidth, bool)
                                          and bandwidth > 0)):
            raise UserError(f"bandwidth: expected 'median' or a positive number, got {bandwidth!r}")
        if isinstance(bandwidth_scales, (int, float)):
            bandwidth_scales = (bandwidth_scales,)
        if not bandwidth_scales or any(isinstance(s, bool) or not isinstance(s, (int, float)) or s <= 0
                                       for s in bandwidth_scales):
            raise UserError(f"bandwidth_scales: expected a non-empty list of positive numbers, got {bandwidth_scales!r}")
        if discrepancy not in DISCREPANCIES:
            raise UserError(f"discrepancy: expected one of {', '.join(DISCREPANCIES)}, got {discrepancy!r}")
        if mmd_estimator not in MMD_ESTIMATORS:
            raise UserError(f"mmd_estimator: expected one of {', '.join(MMD_ESTIMATORS)}, got {mmd_estimator!r}")
        if not isinstance(nll_weight, (int, float)) or nll_weight < 0:
            raise UserError(f"nll_weight: expected a number >= 0, got {nll_weight!r}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise UserError(f"chunk_size: expected a positive integer (neighbourhoods per forward), got {chunk_size!r}")
        embed = build_embedding(embedding, embedding_kwargs, teacher_D=teacher_D, conditional_D=conditional_D)

        params = next(teacher_G.parameters(), None)
        self.device = torch.device(device) if device is not None else (params.device if params is not None else torch.device("cpu"))
        self.teacher = teacher_G
        self.embedding_name = embedding
        self.embed = embed.to(self.device).eval()
        self.m, self.perturbations = m, perturbations
        self.noise_std, self.jitter_px = float(noise_std), int(jitter_px)
        self.bandwidth, self.discrepancy = bandwidth, discrepancy
        self.nll_weight, self.mmd_estimator = float(nll_weight), mmd_estimator
        self.bandwidth_scales = tuple(float(s) for s in bandwidth_scales)
        self.seed, self.chunk_size = int(seed), chunk_size
        self.amp = (self.device.type == "cuda") if amp is None else bool(amp)

    # ----------------------------------------------------------------------- neighbourhoods

    def perturb(self, x: torch.Tensor, index: int = 0) -> torch.Tensor:
        """The m perturbed copies of each input, [B, m, C, H, W] (member 0 is x itself).

        Drawn on the CPU from a generator seeded by (seed, index), so the same call gives the same
        tensor on any device and the global RNG is never touched; use one ``index`` per calibration
        batch so batches get independent perturbations. Dropout noise is not an input perturbation:
        it is drawn inside the forward (see ``_generate``).
        """
        x = self._check_input(x)
        b, c, h, w = x.shape
        gen = torch.Generator().manual_seed(_stream_seed(self.seed, index, 0))
        xs = x.detach().to("cpu", torch.float32).unsqueeze(1).repeat(1, self.m, 1, 1, 1)   # [B, m, C, H, W]
        if "jitter" in self.perturbations:
            j = self.jitter_px
            if j >= min(h, w):
                raise UserError(f"jitter_px: {j} must be smaller than the image size {h}×{w} (reflect padding)")
            shifts = torch.randint(-j, j + 1, (b, self.m, 2), generator=gen)
            shifts[:, 0] = 0
            padded = F.pad(xs.flatten(0, 1), (j, j, j, j), mode="reflect").view(b, self.m, c, h + 2 * j, w + 2 * j)
            out = torch.empty_like(xs)
            for i in range(b):
                for k in range(self.m):
                    dy, dx = (int(v) for v in shifts[i, k])
                    out[i, k] = padded[i, k, :, j + dy:j + dy + h, j + dx:j + dx + w]
            xs = out
        if "noise" in self.perturbations:
            noise = torch.randn(xs.shape, generator=gen) * self.noise_std
            noise[:, 0] = 0.0
            xs = xs + noise
        return xs.to(self.device, x.dtype if x.is_floating_point() else torch.float32)

    def _check_input(self, x) -> torch.Tensor:
        if not torch.is_tensor(x) or x.ndim != 4:
            raise UserError(f"objective input: expected an image batch tensor [B, C, H, W], got "
                            f"{list(x.shape) if torch.is_tensor(x) else type(x).__name__}")
        return x

    def _generate(self, G: nn.Module, xs: torch.Tensor, index: int, start: int) -> torch.Tensor:
        """Embeddings [b, m, d] of G's outputs for perturbed inputs xs [b, m, C, H, W]."""
        b = xs.shape[0]
        flat = xs.flatten(0, 1)
        dropout = "dropout" in self.perturbations
        with _measure_mode(G, dropout), \
                _seeded_global_rng(_stream_seed(self.seed, index, 1, start), self.device, dropout), \
                torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.amp):
            out = G(flat)
            feats = self.embed(out, flat)
        return feats.float().view(b, self.m, -1)

    def _chunks(self, b: int):
        return [(s, min(s + self.chunk_size, b)) for s in range(0, b, self.chunk_size)]

    # ----------------------------------------------------------------------- API

    def reference(self, x: torch.Tensor, index: int = 0) -> DensityReference:
        """Teacher samples, embeddings and bandwidths for batch ``x`` (no grad); cache and reuse it."""
        x = self._check_input(x).to(self.device)
        xs = self.perturb(x, index)
        with torch.no_grad():
            feats = torch.cat([self._generate(self.teacher, xs[s:e], index, s) for s, e in self._chunks(x.shape[0])])
        if self.bandwidth == "median":
            h = median_bandwidth(feats)
        else:
            h = torch.full((feats.shape[0],), float(self.bandwidth), device=feats.device)
        return DensityReference(x=x.detach(), index=int(index), features=feats, bandwidth=h)

    def per_neighbourhood(self, student_G: nn.Module, reference: DensityReference) -> torch.Tensor:
        """Scores [B], one per neighbourhood (differentiable w.r.t. the student unless under no_grad)."""
        if not isinstance(reference, DensityReference):
            raise UserError(f"reference: expected a DensityReference from objective.reference(x), got {type(reference).__name__}")
        if reference.m != self.m:
            raise UserError(f"reference: built with m={reference.m}, but this objective uses m={self.m}")
        xs = self.perturb(reference.x, reference.index)
        scores = []
        for s, e in self._chunks(reference.batch_size):
            Y = self._generate(student_G, xs[s:e], reference.index, s)
            scores.append(self._discrepancy(reference.features[s:e], Y, reference.bandwidth[s:e]))
        return torch.cat(scores)

    def __call__(self, student_G: nn.Module, x: torch.Tensor | None = None,
                 reference: DensityReference | None = None) -> torch.Tensor:
        """Mean score over the batch's neighbourhoods (a scalar loss); pass ``reference`` to reuse the teacher side."""
        if reference is None:
            if x is None:
                raise UserError("objective: give the input batch x or a precomputed reference")
            reference = self.reference(x)
        return self.per_neighbourhood(student_G, reference).mean()

    def _discrepancy(self, X: torch.Tensor, Y: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.discrepancy == "nll":
            return paired_nll_gap(X, Y, h)
        mmd = gaussian_mmd2(X, Y, h, unbiased=self.mmd_estimator == "unbiased", scales=self.bandwidth_scales)
        if self.discrepancy == "mmd":
            return mmd
        return mmd + self.nll_weight * paired_nll_gap(X, Y, h)
