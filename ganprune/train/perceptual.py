"""Output-level distillation terms shared by the OMGD and DCD recipes: Gram (style) and feature losses on a
pretrained feature network, SSIM and total variation.

OMGD's and DCD's released code compares the student's and the teacher's outputs in VGG16 (relu1_2, 2_2, 3_3,
4_3): Σ_l |Gram(φ_l(S)) − Gram(φ_l(T))|₁ over the four layers and |φ_2(S) − φ_2(T)|₁ at the second. VGG
weights need a download; here φ is the bundled FID Inception cut at the ends of its first four resolution
stages (``metrics.fid_inception.InceptionStages``), the same structure on another pretrained network.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from ganprune.core.errors import UserError
from ganprune.metrics.fid_inception import InceptionStages


def gram(f: torch.Tensor) -> torch.Tensor:
    """Channel Gram matrix normalised by c·h·w (as OMGD, DCD and GCC compute it)."""
    b, c, h, w = f.shape
    flat = f.float().reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


class Perceptual(nn.Module):
    """``(style, feature)`` between a student image and a (detached) teacher image: the summed Gram-L1 over
    every stage and the feature-L1 at the second stage (OMGD's ``Sfeatures[1]``)."""

    def __init__(self, stages: int = 4, size: int = 0):
        super().__init__()
        if stages < 2:
            raise UserError(f"feature_stages: expected 2..4 (the feature term reads the second stage), got {stages}")
        self.net = InceptionStages(stages, size)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor):
        with torch.no_grad():
            t_feats = self.net(teacher.detach())
        s_feats = self.net(student)
        style = sum(F.l1_loss(gram(s), gram(t)) for s, t in zip(s_feats, t_feats))
        return style, F.l1_loss(s_feats[1], t_feats[1])


def ssim_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 − SSIM (Gaussian 11×11, σ 1.5) on the [-1, 1] images with the constants of data range 1, as OMGD's
    ``pytorch_ssim`` computes it (it is fed the tanh outputs directly)."""
    return 1.0 - structural_similarity_index_measure(student.float(), teacher.detach().float(), data_range=1.0)


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Σ|∂x| + Σ|∂y| summed over the batch and every pixel (OMGD's TV term: a sum, so it grows with batch
    size and image area; its weight 1e-5 was set for batch 4 at 256²)."""
    x = images.float()
    return (x[..., 1:] - x[..., :-1]).abs().sum() + (x[..., 1:, :] - x[..., :-1, :]).abs().sum()
