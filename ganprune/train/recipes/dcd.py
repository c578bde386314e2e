"""DCD (seed 001): the teacher discriminator as a transformation for feature-map distillation.

Four intermediate generator features (``generator_taps``: same layers in teacher and student) are each
mapped by a 1×1 conv + BN + ReLU connector to a pseudo-image (the generator's output channels, resized
to the image size; cat with the input for a conditional D), both pseudo-images go through the teacher D,
and the student is pulled towards the teacher in the space of an intermediate teacher-D layer:
λ_dcd·Σ_k |D_T^l(ψ_s,k(f_s,k)) − D_T^l(ψ_t,k(f_t,k))|₁ (λ_dcd = 1, l = the last hidden activation).
The teacher D is co-trained (a copy; "collaborative adversarial training"): it learns to tell real B
from the student's outputs, and the student gets an adversarial loss from it as well as from D_S.

Why the teacher-side connectors are frozen random projections: if both were trained, both could map
every feature to the same constant pseudo-image and the term would be zero without teaching anything
(the released code's term is zero for Pix2Pix for another reason); a fixed random 1×1 projection keeps
the teacher's spatial structure, and the student connector + student G must reproduce it.
"""
import torch
import torch.nn.functional as F
from torch import nn

from ganprune.train.recipe import Recipe, discriminator_taps, generator_taps, register_recipe, tap_channels
from ganprune.train.losses import GANLoss


def connector(in_ch: int, out_ch: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1), nn.BatchNorm2d(out_ch), nn.ReLU())


@register_recipe("dcd")
class DCD(Recipe):
    needs_teacher_D = True
    OPTIONS = {"gan_mode": "vanilla", "lambda_dcd": 1.0, "lambda_l1": 100.0, "lambda_gan": 1.0,
               "lambda_teacher_gan": 1.0}

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.gan = GANLoss(self.options["gan_mode"])
        self.D_T = self.trainable_copy(self.teacher_D)
        names = generator_taps(self.student_G)
        self.s_taps, self.t_taps = self.taps(self.student_G, names), self.taps(self.teacher_G, names)
        self.d_taps = self.taps(self.D_T, discriminator_taps(self.D_T, 1))
        out_ch = next(m for m in reversed(list(self.student_G.modules()))
                      if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))).out_channels
        self.s_conn = nn.ModuleList(connector(tap_channels(self.student_G, k), out_ch) for k in names)
        self.t_conn = nn.ModuleList(connector(tap_channels(self.teacher_G, k), out_ch) for k in names)
        self.t_conn.eval().requires_grad_(False)

    def extra_modules(self):
        return {"teacher_D": self.D_T, "student_connectors": self.s_conn, "teacher_connectors": self.t_conn}

    def generator_extras(self):
        return [self.s_conn]

    def extra_optimizers(self, lr, beta1):
        return {"teacher_D": torch.optim.Adam(self.D_T.parameters(), lr=lr, betas=(beta1, 0.999))}

    def forward(self, batch):
        out = super().forward(batch)
        out["student_feats"] = self.s_taps.features()
        with torch.no_grad():
            out["teacher_fake"] = self.teacher_G(batch["A"])
            out["teacher_feats"] = [f.detach() for f in self.t_taps.features()]
        return out

    def extra_loss(self, name, out):
        loss, real, fake = self.standard_d_loss(self.gan, self.D_T, out["A"], out["B"], out["fake"])
        return loss, {"DT_real": real.detach(), "DT_fake": fake.detach()}

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
        o, a, fake = self.options, out["A"], out["fake"]
        adv = self.adversarial(self.student_D, a, fake)
        adv_t = self.adversarial(self.D_T, a, fake)
        l1 = self.l1(fake, self.target(out))
        dcd = self.dcd_loss(out)
        loss = o["lambda_gan"] * adv + o["lambda_teacher_gan"] * adv_t + o["lambda_l1"] * l1 + o["lambda_dcd"] * dcd
        return loss, {"G_adv": adv.detach(), "G_adv_teacher_d": adv_t.detach(), "G_L1": l1.detach(),
                      "G_dcd": dcd.detach()}
