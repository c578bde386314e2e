"""GCC (Li et al., NeurIPS 2021, "Revisiting Discriminator in GAN Compression: A Generator-discriminator
Cooperative Compression Scheme"; code: SJLeo/GCC, ``models/Pix2Pix.py``): selective-activation
discriminator + online collaborative distillation.

* Selective activation: a gate α ∈ [0, 1] (init 1) per hidden channel of the student D, applied after
  each hidden activation as m = 1[α ≥ 0.5] with a straight-through gradient. The gates have their own
  Adam (lr 1e-4) and are updated with the D weights frozen on ½(L_D^real + L_D^fake) + |Δ_S − EMA(Δ_T)|,
  Δ = |L_G^adv − L_D^fake|: the student pair's balance is pulled to the teacher pair's (the D's
  "capacity" follows the small G's). The EMA is the code's annealed one: the new Δ_T gets weight
  β = 1 − progress, so it tracks the teacher early and freezes by the end. The gates shape training only:
  ``D.pt`` holds the D weights, the gates (and the fraction still on, logged as ``D_gates_on``) live in
  ``state.pt``. **In a short run the gates do not act**: they start at 1 and Adam moves them by at most
  about lr per step, so switching a channel off (α < 0.5) takes at least 5,000 steps at 1e-4; over a few
  hundred or even 1,500 steps ``D_gates_on`` stays at 1 and this part of GCC changes nothing.
* Online collaborative distillation: a copy of the teacher G/D is trained alongside (``OnlineTeacher``:
  GAN + 100·L1); 1×1 adapters map 4 student-G features (``generator_taps``) to the teacher's widths, and
  the student is pulled to the teacher by 50·Σ√MSE(f, f_T) + 1e4·Σ√MSE(Gram(f), Gram(f_T)) over those 4 G
  layers and 2 teacher-D layers (the teacher D's last two hidden activations on the student's vs the
  teacher's output). Student task loss: GAN + 100·L1. Paired data only (the teacher trains on B).

Deliberate deviations: ``gan_mode`` defaults to vanilla, the loss ganprune's teachers are trained with (GCC
uses hinge because its nets were pretrained with hinge; set ``gan_mode=hinge`` for such nets); the adapters
are warmed up: for the first ``adapter_warmup`` fraction of the steps the G-feature terms reach only the
randomly initialised adapters (student features detached), so the 50/1e4-weighted terms do not push the
student towards an arbitrary projection (GCC trains them together from step 0, over 100s of epochs); the
EMA's β is annealed per step rather than per epoch.
"""
import torch
import torch.nn.functional as F
from torch import nn

from ganprune.core.errors import UserError
from ganprune.train.perceptual import gram
from ganprune.train.recipe import (OnlineTeacher, Recipe, discriminator_taps, generator_taps, register_recipe,
                                   tap_channels)
from ganprune.train.losses import GANLoss


def root_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # the epsilon keeps the gradient of √ finite when the two match exactly
    return torch.sqrt(F.mse_loss(a.float(), b.float()) + 1e-12)


class ChannelGates(nn.Module):
    """One α per channel of each hidden activation of a discriminator, applied by forward hooks."""

    def __init__(self, D: nn.Module, threshold: float = 0.5):
        super().__init__()
        self.names = [k for k, m in D.named_modules() if isinstance(m, nn.LeakyReLU)]
        self.alphas = nn.ParameterList(nn.Parameter(torch.ones(tap_channels(D, k))) for k in self.names)
        self.threshold = threshold
        modules = dict(D.named_modules())
        self.handles = [modules[k].register_forward_hook(self._gate(i)) for i, k in enumerate(self.names)]

    def mask(self, i: int) -> torch.Tensor:
        alpha = self.alphas[i]
        return (alpha >= self.threshold).to(alpha.dtype) + alpha - alpha.detach()

    def _gate(self, i):
        def hook(module, inputs, output):
            return output * self.mask(i).view(1, -1, 1, 1).to(output.dtype)
        return hook

    @torch.no_grad()
    def clamp_(self):
        for a in self.alphas:
            a.clamp_(0.0, 1.0)

    def fraction_on(self) -> float:
        on = sum(int((a >= self.threshold).sum()) for a in self.alphas)
        return on / sum(a.numel() for a in self.alphas)

    def remove(self):
        for h in self.handles:
            h.remove()


@register_recipe("gcc")
class GCC(Recipe):
    needs_teacher_D = True
    OPTIONS = {"gan_mode": "vanilla", "lambda_l1": 100.0, "lambda_feature": 50.0, "lambda_gram": 1e4, "gate_lr": 1e-4,
               "adapter_warmup": 0.1}
    paired_only = True

    @classmethod
    def validate(cls, options):
        super().validate(options)
        if not 0.0 <= options["adapter_warmup"] < 1.0:
            raise UserError(f"recipe 'gcc' option adapter_warmup: expected a fraction of the steps in [0, 1), "
                            f"got {options['adapter_warmup']!r}")
        if not options["gate_lr"] > 0:
            raise UserError(f"recipe 'gcc' option gate_lr: expected a positive learning rate, "
                            f"got {options['gate_lr']!r}")

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.gan = GANLoss(self.options["gan_mode"])
        self.online = OnlineTeacher(self, self.options["lambda_l1"])
        self.T_G, self.T_D = self.online.G, self.online.D
        names = generator_taps(self.student_G)
        self.s_taps, self.t_taps = self.taps(self.student_G, names), self.taps(self.T_G, names)
        self.d_taps = self.taps(self.T_D, discriminator_taps(self.T_D, 2))
        self.adapters = nn.ModuleList(nn.Conv2d(tap_channels(self.student_G, k), tap_channels(self.T_G, k), 1)
                                      for k in names)
        self.gates = ChannelGates(self.student_D)
        self._closers.append(self.gates.remove)
        self.ema_delta_t = None  # EMA of the teacher pair's |L_G^adv − L_D^fake|
        self._teacher_fake_d = None

    def extra_modules(self):
        return {**self.online.modules(), "adapters": self.adapters, "gates": self.gates}

    def generator_extras(self):
        return [self.adapters]

    def extra_optimizers(self, lr, beta1):
        return {**self.online.optimizers(lr, beta1),
                "gates": torch.optim.Adam(self.gates.parameters(), lr=self.options["gate_lr"], betas=(beta1, 0.999))}

    def state_dict(self):
        return {"ema_delta_t": self.ema_delta_t}

    def load_state_dict(self, state):
        self.ema_delta_t = state.get("ema_delta_t")

    def forward(self, batch):
        out = super().forward(batch)
        out["student_feats"] = self.s_taps.features()
        self.online.forward(out)
        out["teacher_feats"] = [f.detach() for f in self.t_taps.features()]
        return out

    def _d(self, D, a, image):
        return D(self.d_input(D, a, image))

    def extra_loss(self, name, out):
        a = out["A"]
        if name == "teacher_D":
            loss, logs = self.online.loss(name, out)
            self._teacher_fake_d = logs["DT_fake"]
            return loss, logs
        if name == "teacher_G":
            loss, logs = self.online.loss(name, out)
            delta = float((logs["GT_adv"] - self._teacher_fake_d).abs())
            keep = self.step / self.steps  # 1 − β: GCC anneals β from 1 to 0 over training
            self.ema_delta_t = delta if self.ema_delta_t is None else keep * self.ema_delta_t + (1 - keep) * delta
            return loss, logs
        # gates: the student D's weights are frozen in this phase, only α moves
        fake = out["fake"].detach()
        loss_d, real, fake_d = self.standard_d_loss(self.gan, self.student_D, a, out["B"], fake)
        adv = self.gan(self._d(self.student_D, a, fake), True, for_discriminator=False)
        balance = ((adv - fake_d).abs() - self.ema_delta_t).abs()
        return loss_d + balance, {"gates_balance": balance.detach()}

    def after_step(self):
        self.gates.clamp_()
        return {"D_gates_on": self.gates.fraction_on()}

    def distill_loss(self, out):
        o, feature, style = self.options, 0.0, 0.0
        warm = self.step < self.options["adapter_warmup"] * self.steps  # only the adapters learn from these yet
        for f_s, f_t, adapt in zip(out["student_feats"], out["teacher_feats"], self.adapters):
            f = adapt(f_s.detach() if warm else f_s)
            feature = feature + root_mse(f, f_t)
            style = style + root_mse(gram(f), gram(f_t))
        a = out["A"]
        with torch.no_grad():
            self._d(self.T_D, a, out["teacher_fake"])
            d_t = [f.detach() for f in self.d_taps.features()]
        self._d(self.T_D, a, out["fake"])
        for f, f_t in zip(self.d_taps.features(), d_t):
            feature = feature + root_mse(f, f_t)
            style = style + root_mse(gram(f), gram(f_t))
        return o["lambda_feature"] * feature + o["lambda_gram"] * style, feature, style

    def generator_loss(self, out):
        adv = self.gan(self._d(self.student_D, out["A"], out["fake"]), True, for_discriminator=False)
        l1 = self.l1(out["fake"], out["B"])
        distill, feature, style = self.distill_loss(out)
        loss = adv + self.options["lambda_l1"] * l1 + distill
        return loss, {"G_adv": adv.detach(), "G_L1": l1.detach(), "G_distill": distill.detach(),
                      "G_feature": feature.detach(), "G_gram": style.detach()}
