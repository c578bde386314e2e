"""The main recipe: keep the teacher's local output density while learning the task (seed 004).

G: GAN(D_S(G_S(A)) → real) + λ_L1·|G_S(A) − target|₁ + λ_density·LocalDensityObjective(G_S, A), where
target is B for paired data and the teacher's output for unpaired data, and the density term compares
the teacher's and the student's outputs on the same m perturbed copies of each input (neighbourhoods
defined by the teacher; ``ganprune.scoring.objective``). D: the pruned student D, trained alongside as in
pix2pix. The perturbations are seeded by the step, so a resumed run sees the same neighbourhoods.

``m`` defaults to 4 (not the objective's 8): each step costs m extra student and teacher forwards per
image, and the objective's own measurements show m=4 ranks students like m=8.
"""
from ganprune.core.errors import UserError
from ganprune.train.recipe import Recipe, register_recipe
from ganprune.train.losses import GANLoss
from ganprune.scoring.objective import LocalDensityObjective


@register_recipe("density")
class Density(Recipe):
    OPTIONS = {"gan_mode": "vanilla", "lambda_l1": 100.0, "lambda_density": 10.0, "lambda_gan": 1.0, "m": 4,
               "embedding": "pixels", "noise_std": 0.05, "perturbations": ("noise",), "discrepancy": "mmd"}

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        o = self.options
        self.gan = GANLoss(o["gan_mode"])
        if o["embedding"] == "teacher_d" and self.teacher_D is None:
            raise UserError("recipe 'density' option embedding=teacher_d: needs the teacher discriminator")
        self.objective = LocalDensityObjective(self.teacher_G, embedding=o["embedding"], m=o["m"],
                                               perturbations=tuple(o["perturbations"]), noise_std=o["noise_std"],
                                               discrepancy=o["discrepancy"], teacher_D=self.teacher_D,
                                               conditional_D=self.conditional_D, seed=0)

    def generator_loss(self, out):
        o = self.options
        adv = self.adversarial(self.student_D, out["A"], out["fake"])
        l1 = self.l1(out["fake"], self.target(out))
        density = self.objective(self.student_G, reference=self.objective.reference(out["A"], index=self.step))
        loss = o["lambda_gan"] * adv + o["lambda_l1"] * l1 + o["lambda_density"] * density
        return loss, {"G_adv": adv.detach(), "G_L1": l1.detach(), "G_density": density.detach()}
