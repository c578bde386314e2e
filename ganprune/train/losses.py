"""Adversarial losses with the reference pix2pix ``GANLoss`` semantics, plus hinge.

``loss(prediction, target_is_real)`` compares every patch logit of a (PatchGAN) prediction with a
constant real/fake target expanded to the prediction's shape. Hinge needs to know which network is
being trained: the discriminator gets ``relu(1 ∓ D)``, the generator ``-D``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ganprune.core.errors import UserError

GAN_MODES = ("vanilla", "lsgan", "hinge")


class GANLoss(nn.Module):
    """``"vanilla"``: BCE with logits; ``"lsgan"``: MSE to 1/0; ``"hinge"``: the usual D/G forms."""

    def __init__(self, mode: str = "vanilla", real_label: float = 1.0, fake_label: float = 0.0):
        super().__init__()
        if mode not in GAN_MODES:
            raise UserError(f"gan_mode {mode!r}: expected one of {', '.join(GAN_MODES)}")
        self.mode = mode
        self.register_buffer("real_label", torch.tensor(float(real_label)), persistent=False)
        self.register_buffer("fake_label", torch.tensor(float(fake_label)), persistent=False)

    def target(self, prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        label = self.real_label if target_is_real else self.fake_label
        return label.to(prediction.device, prediction.dtype).expand_as(prediction)

    def forward(self, prediction: torch.Tensor, target_is_real: bool, for_discriminator: bool = True) -> torch.Tensor:
        # Losses in fp32 even under autocast: a mean over many patches in half precision loses digits.
        prediction = prediction.float()
        if self.mode == "vanilla":
            return F.binary_cross_entropy_with_logits(prediction, self.target(prediction, target_is_real))
        if self.mode == "lsgan":
            return F.mse_loss(prediction, self.target(prediction, target_is_real))
        if for_discriminator:
            return F.relu(1.0 - prediction).mean() if target_is_real else F.relu(1.0 + prediction).mean()
        if not target_is_real:
            raise ValueError("hinge generator loss is defined only for target_is_real=True")
        return -prediction.mean()

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
