"""DGL-GAN (seed 002): the frozen, pretrained teacher D guides the pruned generator.

G: GAN(D_S(G_S(A)) → real) + λ·GAN(D_T(G_S(A)) → real) + λ_L1·|G_S(A) − target|₁, λ = 0.3 by default
(published range 0.1–0.5); D_S is trained as in pix2pix, D_T never changes (eval mode, no grad: only
the student's output receives its gradient). The teacher D already knows what the real data looks like,
so it steadies the adversarial signal a small student D gives early in fine-tuning.
"""
from ganprune.train.recipe import Recipe, register_recipe
from ganprune.train.losses import GANLoss


@register_recipe("dgl")
class DGL(Recipe):
    needs_teacher_D = True
    OPTIONS = {"gan_mode": "vanilla", "lambda_teacher_d": 0.3, "lambda_l1": 100.0}

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.gan = GANLoss(self.options["gan_mode"])

    def generator_loss(self, out):
        a, fake = out["A"], out["fake"]
        adv = self.adversarial(self.student_D, a, fake)
        adv_t = self.adversarial(self.teacher_D, a, fake)
        l1 = self.l1(fake, self.target(out))
        loss = adv + self.options["lambda_teacher_d"] * adv_t + self.options["lambda_l1"] * l1
        return loss, {"G_adv": adv.detach(), "G_adv_teacher_d": adv_t.detach(), "G_L1": l1.detach()}
