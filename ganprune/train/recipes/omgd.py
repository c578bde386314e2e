"""OMGD (Ren et al., ICCV 2021, "Online Multi-Granularity Distillation for GAN Compression"; code:
bytedance/OMGD, ``distillers/multiteacher_distiller.py`` and its pix2pix scripts).

The student learns from the teacher's output and features only: no GAN loss, no ground-truth loss, and no
student D (``student_gan`` false: the trainer runs no D phase and ``D.pt`` is the D it was given). Per step,
with T the teacher's output (detached) and S the student's:

    λ_ssim·(1 − SSIM(S, T)) + λ_style·Σ_l |Gram(φ_l(S)) − Gram(φ_l(T))|₁ + λ_feature·|φ_2(S) − φ_2(T)|₁
    + λ_tv·TV(S) + λ_cd·Σ_k ‖pool(a_k(f_S,k)) − pool(f_T,k)‖²

(``ganprune.train.perceptual``), the last being channel distillation: student features at the four
``generator_taps`` go through 1×1 conv + BN + ReLU connectors a_k (trained with G) to the teacher's widths,
and the spatial means of both are compared by MSE. Defaults are the released pix2pix values (10, 1e4, 10,
1e-5; λ_cd 10 as in the U-Net edges2shoes script; the CycleGAN scripts use 500). ``online`` (default, as
published): the teacher is a copy trained alongside on GAN + λ_L1·L1 to B with a copy of its D
(``OnlineTeacher``; paired data only), and the student distils from it.

Deliberate deviations: one teacher (the given one; OMGD trains a wide and a deep teacher and sums the
output terms over both); φ is the bundled FID Inception's first four stages at the images' own size
(``feature_size`` resizes first, ``feature_stages`` cuts earlier), not VGG16, which needs a download;
the channel taps are ``generator_taps`` (U-Net decoder outputs / ResNet blocks) rather than OMGD's
hand-picked layer names; ``gan_mode`` for the online teacher defaults to ``vanilla``, how ganprune's
teachers are trained (OMGD trains its teachers with hinge from scratch); ``student_gan`` true adds
λ_gan·GAN(D_S(S) → real) and trains the student D, which OMGD does not do.
"""
import torch
from torch import nn

from ganprune.train.losses import GANLoss
from ganprune.train.perceptual import Perceptual, ssim_loss, total_variation
from ganprune.train.recipe import (OnlineTeacher, Recipe, TeacherOutputDistillation, connector, generator_taps,
                                   register_recipe, tap_channels)


@register_recipe("omgd")
class OMGD(TeacherOutputDistillation, Recipe):
    OPTIONS = {"lambda_ssim": 10.0, "lambda_style": 1e4, "lambda_feature": 10.0, "lambda_tv": 1e-5, "lambda_cd": 10.0,
               "online": True, "gan_mode": "vanilla", "lambda_l1": 100.0, "student_gan": False, "lambda_gan": 1.0,
               "feature_stages": 4, "feature_size": 0}

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        o = self.options
        self.gan = GANLoss(o["gan_mode"])
        self.trains_student_D = o["student_gan"]
        self.online = OnlineTeacher(self, o["lambda_l1"]) if o["online"] else None
        teacher = self.online.G if self.online else self.teacher_G
        names = generator_taps(self.student_G)
        self.s_taps, self.t_taps = self.taps(self.student_G, names), self.taps(teacher, names)
        self.connectors = nn.ModuleList(connector(tap_channels(self.student_G, k), tap_channels(teacher, k))
                                        for k in names)
        self.perceptual = Perceptual(o["feature_stages"], o["feature_size"])

    def extra_modules(self):
        return {"connectors": self.connectors, **(self.online.modules() if self.online else {})}

    def generator_extras(self):
        return [self.connectors]

    def channel_distillation(self, out):
        return sum(torch.mean((c(s).float().mean((2, 3)) - t.float().mean((2, 3))) ** 2)
                   for s, t, c in zip(out["student_feats"], out["teacher_feats"], self.connectors))

    def generator_loss(self, out):
        o, fake, teacher = self.options, out["fake"], out["teacher_fake"]
        ssim = ssim_loss(fake, teacher)
        style, feature = self.perceptual(fake, teacher)
        tv = total_variation(fake)
        cd = self.channel_distillation(out)
        loss = (o["lambda_ssim"] * ssim + o["lambda_style"] * style + o["lambda_feature"] * feature
                + o["lambda_tv"] * tv + o["lambda_cd"] * cd)
        logs = {"G_ssim": ssim.detach(), "G_style": style.detach(), "G_feature": feature.detach(),
                "G_tv": tv.detach(), "G_cd": cd.detach()}
        if self.trains_student_D:
            adv = self.adversarial(self.student_D, out["A"], fake)
            loss = loss + o["lambda_gan"] * adv
            logs["G_adv"] = adv.detach()
        return loss, logs
