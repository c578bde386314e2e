"""Output distillation, the control for the recipe benchmark: the student fits the frozen teacher's output
with a plain L1 loss, λ·|G_S(A) − G_T(A)|₁, and nothing else (no GAN term, no ground truth, no D phase).

Every distillation recipe should beat this at equal steps; a recipe that does not adds nothing over copying
the teacher's outputs. Works for paired and unpaired data alike (B is never read).
"""
from ganprune.train.recipe import Recipe, register_recipe


@register_recipe("output_l1")
class OutputL1(Recipe):
    trains_student_D = False
    OPTIONS = {"lambda_l1": 100.0}

    def generator_loss(self, out):
        l1 = self.l1(out["fake"], self.teacher_output(out["A"]))
        return self.options["lambda_l1"] * l1, {"G_L1_teacher": l1.detach()}
