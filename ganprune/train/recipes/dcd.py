"""DCD (Hu et al., 2022, "Discriminator-Cooperated Feature Map Distillation for GAN Compression"; code:
poopit/DCD-official, ``distillers/pix2pixbest_distiller.py``).

As the released pix2pix distiller does it, the student has no GAN or ground-truth loss and no D of its own
(no D phase; ``D.pt`` is the D it was given). Its loss, with T the teacher's output (detached):

    λ_style·Σ_l |Gram(φ_l(S)) − Gram(φ_l(T))|₁ + λ_feature·|φ_2(S) − φ_2(T)|₁      (output terms)
    + λ_dcd·Σ_k |D_T^l(ψ_s,k(f_s,k)) − D_T^l(ψ_t,k(f_t,k))|₁                       (the DCD term)

Output terms as in OMGD, on which DCD's code is built (``ganprune.train.perceptual``); in the DCD term four
intermediate generator features (``generator_taps``, the same layers in teacher and student) are each mapped
by a 1×1 conv + BN + ReLU connector to a pseudo-image (the generator's output channels, resized to the image
size; cat with the input for a conditional D), and both pseudo-images go through the teacher D, compared at
its last hidden activation. ``online`` (default, as in the code): teacher G and D are copies trained
alongside (``OnlineTeacher``: the teacher D learns real B vs the *teacher's* outputs, the teacher G GAN +
λ_L1·L1 to B), and the student distils from that moving pair. ``lambda_teacher_gan`` > 0 adds the teacher
D's adversarial term on the student's output (DCD's CycleGAN distiller adds it at weight 1; the pix2pix
distiller computes it but leaves it out of the loss, hence 0).

Deliberate deviations: the teacher D is the trained one, fine-tuned (the paper builds it from scratch
during a 200-epoch run); φ is the bundled FID Inception's first four stages, not VGG16; style/feature
weights are the distiller's defaults 1e4 / 10 (the released pix2pix script passes a four-value list of
which the distiller reads the first two, i.e. 10 / 1e4, apparently by mistake); teacher-side connectors
are frozen random projections — if both sides were trained, both could map every feature to one constant
pseudo-image and the term would vanish without teaching anything (the released code trains both; its
D-feature hook names a layer the n_layers D does not have, so there the term is zero anyway); gan_mode for
the online teacher defaults to vanilla, how ganprune's teachers are trained (the code: hinge).
"""
import torch
import torch.nn.functional as F
from torch import nn

from ganprune.train.losses import GANLoss
from ganprune.train.perceptual import Perceptual
from ganprune.train.recipe import (OnlineTeacher, Recipe, TeacherOutputDistillation, connector, discriminator_taps,
                                   generator_taps, register_recipe, tap_channels)


@register_recipe("dcd")
class DCD(TeacherOutputDistillation, Recipe):
    needs_teacher_D = True
    trains_student_D = False
    OPTIONS = {"lambda_style": 1e4, "lambda_feature": 10.0, "lambda_dcd": 1.0, "lambda_teacher_gan": 0.0,
               "online": True, "gan_mode": "vanilla", "lambda_l1": 100.0, "feature_stages": 4, "feature_size": 0}

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        o = self.options
        self.gan = GANLoss(o["gan_mode"])
        self.online = OnlineTeacher(self, o["lambda_l1"]) if o["online"] else None
        self.T_G, self.D_T = (self.online.G, self.online.D) if self.online else (self.teacher_G, self.teacher_D)
        names = generator_taps(self.student_G)
        self.s_taps, self.t_taps = self.taps(self.student_G, names), self.taps(self.T_G, names)
        self.d_taps = self.taps(self.D_T, discriminator_taps(self.D_T, 1))
        out_ch = next(m for m in reversed(list(self.student_G.modules()))
                      if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))).out_channels
        self.s_conn = nn.ModuleList(connector(tap_channels(self.student_G, k), out_ch) for k in names)
        self.t_conn = nn.ModuleList(connector(tap_channels(self.T_G, k), out_ch) for k in names)
        self.t_conn.eval().requires_grad_(False)
        self.perceptual = Perceptual(o["feature_stages"], o["feature_size"])

    def extra_modules(self):
        return {"student_connectors": self.s_conn, "teacher_connectors": self.t_conn,
                **(self.online.modules() if self.online else {})}

    def generator_extras(self):
        return [self.s_conn]

    def _d_features(self, a, pseudo):
        pseudo = F.interpolate(pseudo, size=a.shape[-2:], mode="bilinear", align_corners=False)
        self.D_T(self.d_input(self.D_T, a, pseudo))
        return self.d_taps.features()[0]

    def dcd_loss(self, out):
        a, total = out["A"], 0.0
        for f_s, f_t, c_s, c_t in zip(out["student_feats"], out["teacher_feats"], self.s_conn, self.t_conn):
            with torch.no_grad():
                target = self._d_features(a, c_t(f_t)).detach()
            total = total + self.l1(self._d_features(a, c_s(f_s)), target)
        return total

    def generator_loss(self, out):
        o, fake = self.options, out["fake"]
        style, feature = self.perceptual(fake, out["teacher_fake"])
        dcd = self.dcd_loss(out)
        loss = o["lambda_style"] * style + o["lambda_feature"] * feature + o["lambda_dcd"] * dcd
        logs = {"G_style": style.detach(), "G_feature": feature.detach(), "G_dcd": dcd.detach()}
        if o["lambda_teacher_gan"] > 0:
            adv_t = self.adversarial(self.D_T, out["A"], fake)
            loss = loss + o["lambda_teacher_gan"] * adv_t
            logs["G_adv_teacher_d"] = adv_t.detach()
        return loss, logs
