import math

import pytest
import torch
import torch.nn.functional as F

from ganprune.core.errors import UserError
from ganprune.train.losses import GANLoss

X = torch.tensor([-2.0, -0.5, 0.5, 3.0]).view(1, 1, 2, 2)


def test_vanilla_is_bce_with_logits_against_expanded_constant_targets():
    loss = GANLoss("vanilla")
    assert loss(torch.zeros(2, 1, 4, 4), True).item() == pytest.approx(math.log(2))
    # BCE-with-logits: softplus(-x) for real targets, softplus(x) for fake ones.
    assert loss(X, True).item() == pytest.approx(F.softplus(-X).mean().item(), rel=1e-6)
    assert loss(X, False).item() == pytest.approx(F.softplus(X).mean().item(), rel=1e-6)
    real = sum(math.log1p(math.exp(-v)) for v in (-2.0, -0.5, 0.5, 3.0)) / 4
    assert loss(X, True).item() == pytest.approx(real, rel=1e-6)
    assert loss.target(X, True).shape == X.shape and loss.target(X, False).sum() == 0


def test_lsgan_is_mse_to_one_and_zero():
    loss = GANLoss("lsgan")
    assert loss(X, True).item() == pytest.approx((9 + 2.25 + 0.25 + 4) / 4)
    assert loss(X, False).item() == pytest.approx((4 + 0.25 + 0.25 + 9) / 4)


def test_hinge_discriminator_and_generator_forms():
    loss = GANLoss("hinge")
    assert loss(X, True).item() == pytest.approx((3 + 1.5 + 0.5 + 0) / 4)      # relu(1 - x)
    assert loss(X, False).item() == pytest.approx((0 + 0.5 + 1.5 + 4) / 4)     # relu(1 + x)
    assert loss(X, True, for_discriminator=False).item() == pytest.approx(-0.25)  # -mean(x)
    with pytest.raises(ValueError):
        loss(X, False, for_discriminator=False)


@pytest.mark.parametrize("mode", ["vanilla", "lsgan", "hinge"])
def test_losses_are_fp32_and_differentiable(mode):
    pred = X.clone().to(torch.bfloat16).requires_grad_(True)
    out = GANLoss(mode)(pred, True, for_discriminator=False)
    assert out.dtype == torch.float32 and out.dim() == 0
    out.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_unknown_mode_is_a_user_error():
    with pytest.raises(UserError, match="gan_mode 'wgan'"):
        GANLoss("wgan")
