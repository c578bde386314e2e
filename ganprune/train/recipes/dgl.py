"""DGL-GAN (Tian et al., 2021, "DGL-GAN: Discriminator Guided Learning for GAN Compression"; code:
yuesongtian/DGL-GAN, ``stylegan2_dgl/training/loss.py`` ``G_dg_logistic_ns``): the frozen, pretrained
teacher D guides the pruned generator.

G: GAN(D_S(G_S(A)) → real) + λ·GAN(D_T(G_S(A)) → real) + λ_L1·|G_S(A) − target|₁ with λ = 0.1, the code's
weight (its term is the non-saturating softplus(−D_T(G_S(A))), which is the vanilla GAN loss); D_S is
trained as in pix2pix, D_T never changes (eval mode, no grad: only the student's output receives its
gradient).

Deliberate deviations: the λ_L1 (100) term, pix2pix's ground-truth L1 (or, for unpaired data, L1 to the
teacher's output), is ours: DGL-GAN was published for unconditional GANs (StyleGAN2, BigGAN), which have no
reconstruction target, so the recipe is pix2pix plus DGL's teacher-D term; the paper's two-stage training
schedule is not reproduced (the term acts from step 0). It never distils the teacher's output.
"""
from ganprune.train.recipe import Recipe, register_recipe
from ganprune.train.losses import GANLoss


@register_recipe("dgl")
class DGL(Recipe):
    needs_teacher_D = True
    OPTIONS = {"gan_mode": "vanilla", "lambda_teacher_d": 0.1, "lambda_l1": 100.0}

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
