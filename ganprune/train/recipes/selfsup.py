"""Self-supervised GAN compression (seed 003, Yu & Pool 2020): the compressed G should *score like* the
original G under the original losses, judged by the original (dense, trainable) D.

G_C: Σ_k |l_k(G_O) − l_k(G_C)| / |l_k(G_O)| over the generator's loss terms k (adversarial vs D, and L1
to B with paired data), each a relative gap so terms of different scale weigh alike.
D (the dense teacher D, not pruned and not frozen: pass a copy of it as the student D):
l_D(D, G_C) + λ·|l_D(D, G_O) − l_D(D, G_C)| / |l_D(D, G_O)|, λ = 0.5, l_D = ½(D(real) → real +
D(fake) → fake): D keeps discriminating while the two generators' D losses are pulled together.
The student starts from dense weights: a channel-pruned copy (``prune`` keeps the teacher's weights),
or the dense G itself with ``sparsity``: fine-grained magnitude sparsity per conv layer, raised from 5%
to ``sparsity`` over the first half of training on the cubic schedule of Zhu & Gupta (2017) and
re-applied after every step (zeros are logged as ``G_sparsity``). Element sparsity gives NO dense MAC
or latency reduction: the convs keep their shapes; only sparse kernels or compression would profit.
"""
import torch
from torch import nn

from ganprune.core.errors import UserError
from ganprune.train.recipe import Recipe, register_recipe
from ganprune.train.losses import GANLoss

START_SPARSITY = 0.05


def sparsity_at(step: int, steps: int, target: float) -> float:
    """Cubic ramp from 5% (or the target, if lower) at step 0 to ``target`` at half of training."""
    start = min(START_SPARSITY, target)
    half = max(1, steps // 2)
    progress = min(1.0, step / half)
    return target + (start - target) * (1.0 - progress) ** 3


@register_recipe("selfsup")
class SelfSupervised(Recipe):
    needs_teacher_D = True
    OPTIONS = {"gan_mode": "vanilla", "lambda_d": 0.5, "sparsity": 0.0}

    @classmethod
    def validate(cls, options):
        super().validate(options)
        if not 0.0 <= options["sparsity"] < 1.0:
            raise UserError(f"recipe 'selfsup' option sparsity: expected a fraction in [0, 1), "
                            f"got {options['sparsity']!r}")

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        dense = {k: v.shape for k, v in self.teacher_D.state_dict().items()}
        if {k: v.shape for k, v in self.student_D.state_dict().items()} != dense:
            raise UserError("recipe 'selfsup': trains the dense D; pass a copy of the teacher D as the student D "
                            "(not a pruned one)")
        self.gan = GANLoss(self.options["gan_mode"])
        self.convs = [m for m in self.student_G.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]

    def forward(self, batch):
        out = super().forward(batch)
        out["teacher_fake"] = self.teacher_output(batch["A"])
        return out

    def _d_loss(self, out, fake):
        D = self.student_D
        return 0.5 * (self.gan(D(self.d_input(D, out["A"], out["B"])), True)
                      + self.gan(D(self.d_input(D, out["A"], fake)), False))

    @staticmethod
    def gap(original: torch.Tensor, compressed: torch.Tensor) -> torch.Tensor:
        return (original.detach() - compressed).abs() / original.detach().abs().clamp_min(1e-8)

    def discriminator_loss(self, out):
        l_c = self._d_loss(out, out["fake"].detach())
        l_o = self._d_loss(out, out["teacher_fake"])
        gap = self.gap(l_o, l_c)
        return l_c + self.options["lambda_d"] * gap, {"D_loss_compressed": l_c.detach(),
                                                       "D_loss_original": l_o.detach(), "D_gap": gap.detach()}

    def generator_loss(self, out):
        D, a = self.student_D, out["A"]
        with torch.no_grad():
            adv_o = self.adversarial(D, a, out["teacher_fake"])
        adv_c = self.adversarial(D, a, out["fake"])
        logs = {"G_adv": adv_c.detach(), "G_adv_gap": self.gap(adv_o, adv_c).detach()}
        loss = self.gap(adv_o, adv_c)
        if self.paired:
            l1_o, l1_c = self.l1(out["teacher_fake"], out["B"]), self.l1(out["fake"], out["B"])
            loss = loss + self.gap(l1_o, l1_c)
            logs.update({"G_L1": l1_c.detach(), "G_L1_gap": self.gap(l1_o, l1_c).detach()})
        return loss, logs

    @torch.no_grad()
    def after_step(self):
        if not self.options["sparsity"]:
            return {}
        level = sparsity_at(self.step + 1, self.steps, self.options["sparsity"])
        zeros = total = 0
        for conv in self.convs:
            w = conv.weight
            k = int(level * w.numel())
            if k:
                cut = w.abs().flatten().kthvalue(k).values
                w.masked_fill_(w.abs() <= cut, 0.0)
            zeros += int((w == 0).sum())
            total += w.numel()
        return {"G_sparsity": zeros / total, "G_sparsity_target": level}
