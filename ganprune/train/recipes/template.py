"""A minimal working recipe to copy: output distillation (the student imitates the teacher) + GAN.

Copy this file, rename the class and the registered name, change the losses. Importing the module
registers the recipe, so ``import my_recipe`` before ``finetune(..., recipe="my-name")`` is enough.
The trainer runs, per step: ``forward`` → D phase (``discriminator_loss``) → extra phases (one per
entry of ``extra_optimizers``) → G phase (``generator_loss``) → ``after_step``; see ``Recipe``.
"""
from ganprune.train.recipe import Recipe, register_recipe
from ganprune.train.losses import GANLoss


@register_recipe("template")          # the name used by finetune(recipe=...) and --recipe
class Template(Recipe):
    # Every option with its default; the default's type is the type users must give (unknown names,
    # wrong types and negative lambda_* weights are refused with a one-line UserError).
    OPTIONS = {"gan_mode": "vanilla", "lambda_distill": 100.0}

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)   # sets student_G/D, teacher_G/D (frozen), paired, options
        self.gan = GANLoss(self.options["gan_mode"])

    # forward(batch) is inherited: {"A", "B", "fake": student_G(A)}; override it to compute more once
    # per step (e.g. teacher outputs), and return the dict every phase receives as ``out``.

    # discriminator_loss: the base class's default trains the student D on real B vs the (detached) student
    # output with self.gan, as in pix2pix; override it to train D differently. It returns (loss, logs) too.

    def generator_loss(self, out):
        adv = self.adversarial(self.student_D, out["A"], out["fake"])
        distill = self.l1(out["fake"], self.teacher_output(out["A"]))    # teacher output, no grad
        return adv + self.options["lambda_distill"] * distill, {"G_adv": adv.detach(), "G_distill": distill.detach()}
