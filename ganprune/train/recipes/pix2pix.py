"""Plain Pix2Pix losses (Isola et al.): the baseline every other recipe is compared with.

G: GAN(D_S(A, G_S(A)) → real) + λ·|G_S(A) − B|₁; D: ½(D_S(A, B) → real + D_S(A, G_S(A)) → fake).
No teacher is used: this is "prune, then retrain with the original objective", and it is how
``ganprune.train.teacher.train_teacher`` trains the teacher itself.
"""
from ganprune.train.recipe import Recipe, register_recipe
from ganprune.train.losses import GANLoss


@register_recipe("pix2pix")
class Pix2Pix(Recipe):
    OPTIONS = {"gan_mode": "vanilla", "lambda_l1": 100.0}
    paired_only = True
    needs_teacher = False

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.gan = GANLoss(self.options["gan_mode"])

    def generator_loss(self, out):
        adv = self.adversarial(self.student_D, out["A"], out["fake"])
        l1 = self.l1(out["fake"], out["B"])
        return adv + self.options["lambda_l1"] * l1, {"G_adv": adv.detach(), "G_L1": l1.detach()}
