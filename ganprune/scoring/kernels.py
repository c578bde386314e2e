"""Gaussian-kernel math over batches of local neighbourhoods ([B, m, d] tensors): MMD, leave-one-out KDE
log densities, the paired NLL gap and the median bandwidth. Sums of exponentials are done in log space,
and everything is differentiable, so the same functions score candidates and serve as a loss
(``ganprune.scoring.objective`` explains why these estimators)."""
from __future__ import annotations

import math

import torch


def _bandwidth(bandwidth, like: torch.Tensor) -> torch.Tensor:
    """A float or a [B] tensor → [B, 1, 1] in the dtype/device of ``like``."""
    h = torch.as_tensor(bandwidth, dtype=like.dtype, device=like.device)
    return h.reshape(-1, 1, 1) if h.ndim else h.reshape(1, 1, 1)


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise squared distances [B, n, m] between a [B, n, d] and b [B, m, d].

    Uses ‖a‖² + ‖b‖² − 2a·b (one batched matmul) on features centred at b's mean: distances do not
    change, and centring removes the cancellation error the expansion has for far-from-origin features.
    """
    centre = b.mean(dim=1, keepdim=True).detach()
    a, b = a - centre, b - centre
    sq = (a * a).sum(-1, keepdim=True) + (b * b).sum(-1).unsqueeze(1) - 2.0 * torch.bmm(a, b.transpose(1, 2))
    return sq.clamp_min(0.0)


def _kernel(sq: torch.Tensor, h: torch.Tensor, scales) -> torch.Tensor:
    """Gaussian kernel on squared distances, averaged over bandwidths s·h for s in ``scales``."""
    return torch.stack([torch.exp(-sq / (2.0 * (s * h) ** 2)) for s in scales]).mean(0)


def gaussian_mmd2(X: torch.Tensor, Y: torch.Tensor, bandwidth, unbiased: bool = False, scales=(1.0,)) -> torch.Tensor:
    """Squared MMD per neighbourhood between sample sets X, Y [B, m, d]; returns [B].

    Kernel k(a, b) = mean over s in ``scales`` of exp(-‖a − b‖² / 2(s·h)²), h = ``bandwidth`` (float or
    [B]); one scale is the plain Gaussian kernel, several a characteristic mixture that keeps the score
    (and its gradient) informative for students far outside the teacher's neighbourhood, where a single
    narrow kernel is ~0 for every cross pair and the MMD saturates. Biased (V-statistic, default):
    mean K_XX + mean K_YY − 2 mean K_XY, ≥ 0 and exactly 0 for identical sets. Unbiased: the paired
    U-statistic (mean over i ≠ j of k(x_i,x_j) + k(y_i,y_j) − k(x_i,y_j) − k(x_j,y_i)); needs equal set
    sizes, is 0 when Y = X, but can be negative.
    """
    if X.ndim != 3 or Y.ndim != 3 or X.shape[0] != Y.shape[0] or X.shape[2] != Y.shape[2]:
        raise ValueError(f"expected X [B, m, d] and Y [B, n, d], got {list(X.shape)} and {list(Y.shape)}")
    h = _bandwidth(bandwidth, X)
    kxx = _kernel(_sq_dists(X, X), h, scales)
    kyy = _kernel(_sq_dists(Y, Y), h, scales)
    kxy = _kernel(_sq_dists(X, Y), h, scales)
    if not unbiased:
        return kxx.mean((1, 2)) + kyy.mean((1, 2)) - 2.0 * kxy.mean((1, 2))
    m = X.shape[1]
    if Y.shape[1] != m or m < 2:
        raise ValueError(f"the unbiased estimator needs two sets of equal size >= 2, got {X.shape[1]} and {Y.shape[1]}")
    off = ~torch.eye(m, dtype=torch.bool, device=X.device)
    h_ij = kxx + kyy - kxy - kxy.transpose(1, 2)
    return h_ij[:, off].mean(1)


def _log_kernel_mean(points: torch.Tensor, samples: torch.Tensor, bandwidth, exclude_self: bool) -> torch.Tensor:
    """log( mean_j k(p_i, s_j) ) [B, n] with the unnormalised kernel, via logsumexp (no underflow)."""
    h = _bandwidth(bandwidth, points)
    logk = -_sq_dists(points, samples) / (2.0 * h * h)
    count = samples.shape[1]
    if exclude_self:
        if points.shape[1] != samples.shape[1]:
            raise ValueError("exclude_self pairs point i with sample i: both sets need the same size")
        eye = torch.eye(count, dtype=torch.bool, device=points.device)
        logk = logk.masked_fill(eye, float("-inf"))
        count -= 1
    return torch.logsumexp(logk, dim=2) - math.log(count)


def kde_log_density(points: torch.Tensor, samples: torch.Tensor, bandwidth, exclude_self: bool = False) -> torch.Tensor:
    """Log density [B, n] of ``points`` [B, n, d] under the Gaussian KDE of ``samples`` [B, m, d].

    p̂(p) = 1/m Σ_j N(p; s_j, h² I), computed with logsumexp so far points give large negative values,
    never −inf or NaN. ``exclude_self``: point i is scored without sample i (leave-one-out; n = m).
    """
    if points.ndim != 3 or samples.ndim != 3 or points.shape[0] != samples.shape[0] or points.shape[2] != samples.shape[2]:
        raise ValueError(f"expected points [B, n, d] and samples [B, m, d], got {list(points.shape)} and {list(samples.shape)}")
    d = points.shape[2]
    h = _bandwidth(bandwidth, points).reshape(-1, 1)
    return _log_kernel_mean(points, samples, bandwidth, exclude_self) - 0.5 * d * torch.log(2.0 * math.pi * h * h)


def paired_nll_gap(X: torch.Tensor, Y: torch.Tensor, bandwidth) -> torch.Tensor:
    """[B]: mean NLL of student samples Y under the teacher KDE of X, minus the teacher's own.

    Both are leave-one-out with y_i paired to x_i (same perturbed input): y_i is scored against the
    teacher samples of the *other* inputs, exactly as x_i is, so a student equal to the teacher scores
    exactly 0. The KDE normalisers cancel and are never formed. Negative values mean the student's
    samples sit nearer the teacher's than the teacher's own do (e.g. a collapsed neighbourhood): the
    NLL is blind to lost spread, which ``mmd`` is not.
    """
    own = _log_kernel_mean(X, X, bandwidth, exclude_self=True).mean(1)
    student = _log_kernel_mean(Y, X, bandwidth, exclude_self=True).mean(1)
    return own - student


def median_bandwidth(X: torch.Tensor, floor: float = 1e-6) -> torch.Tensor:
    """Median heuristic per neighbourhood: h_b = median over pairs i < j of ‖x_i − x_j‖; returns [B].

    Floored at ``floor`` × (1 + mean feature norm) so a neighbourhood whose samples coincide gets a
    tiny but finite kernel instead of a division by zero.
    """
    X = X.detach()
    m = X.shape[1]
    iu = torch.triu_indices(m, m, offset=1, device=X.device)
    pair_sq = _sq_dists(X, X)[:, iu[0], iu[1]]
    h = pair_sq.median(dim=1).values.sqrt()
    return torch.maximum(h, floor * (1.0 + X.norm(dim=2).mean(dim=1)))
