"""Plain CycleGAN-style losses for compressing one direction of a CycleGAN (or any unpaired G).

There is no second generator to close a cycle, so the teacher plays its part: the reconstruction
target is the teacher's output for the same input (a pseudo-target; also with paired data, so the
student copies the translation it replaces). G: GAN(D_S(G_S(A)) → real) + λ_rec·|G_S(A) − G_T(A)|₁ +
λ_idt·λ_rec·|G_S(B) − B|₁ (CycleGAN's identity loss: an image already in the target domain stays as it
is; needs equal input/output channels). D: ½(D_S(B) → real + D_S(G_S(A)) → fake). LSGAN by default,
as in CycleGAN; no history pool of fakes (it would have to be checkpointed for exact resumption, and
fine-tuning starts from a trained D).
"""
from ganprune.core.errors import UserError
from ganprune.train.recipe import Recipe, register_recipe
from ganprune.train.losses import GANLoss


@register_recipe("cyclegan")
class CycleGAN(Recipe):
    OPTIONS = {"gan_mode": "lsgan", "lambda_rec": 10.0, "lambda_idt": 0.5}

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.gan = GANLoss(self.options["gan_mode"])

    def forward(self, batch):
        out = super().forward(batch)
        out["teacher_fake"] = self.teacher_output(batch["A"])
        if self.options["lambda_idt"] > 0:
            if batch["A"].shape[1] != batch["B"].shape[1]:
                raise UserError(f"recipe 'cyclegan' option lambda_idt: the identity loss needs as many input as "
                                f"output channels ({batch['A'].shape[1]} vs {batch['B'].shape[1]}); set it to 0")
            out["idt"] = self.student_G(batch["B"])
        return out

    def generator_loss(self, out):
        o = self.options
        adv = self.adversarial(self.student_D, out["A"], out["fake"])
        rec = self.l1(out["fake"], out["teacher_fake"])
        loss = adv + o["lambda_rec"] * rec
        logs = {"G_adv": adv.detach(), "G_rec": rec.detach()}
        if "idt" in out:
            idt = self.l1(out["idt"], out["B"])
            loss = loss + o["lambda_idt"] * o["lambda_rec"] * idt
            logs["G_idt"] = idt.detach()
        return loss, logs
