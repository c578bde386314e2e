"""The recipe base class and registry: what a fine-tuning method has to say, and nothing about how to run it.

A recipe turns a batch into losses; the trainer (``ganprune.train.trainer``) owns devices, precision,
optimizers, the LR schedule, DDP, checkpoints and NaN recovery. One training step is:

1. ``forward(batch)`` → a dict of tensors shared by the phases (default: ``A``, ``B``, student ``fake``);
2. the discriminator phase: ``discriminator_loss(out)`` updates the student D (+ ``discriminator_extras``),
   unless ``trains_student_D`` is false (OMGD, DCD: the student learns from the teacher alone and its D
   stays as it was);
3. one phase per entry of ``extra_optimizers()`` (in order): ``extra_loss(name, out)`` updates that
   optimizer's parameters (a co-trained teacher, GCC's channel gates, ...);
4. the generator phase: ``generator_loss(out)`` updates the student G (+ ``generator_extras``, e.g. DCD
   connectors, GCC adapters);
5. ``after_step()`` (e.g. re-apply sparsity masks).
During a phase only that phase's parameters require grad, so a loss may run any network forward.
Each loss returns ``(scalar tensor, {name: float-able tensor})``; the logs go to ``log.csv``. A loss may
instead be a generator of such pairs (e.g. one per supernet slice): each part is back-propagated as soon
as it is made, so gradients add up while only one part's activations are held. A recipe with
``uses_D = False`` has no discriminator phase and trains with ``student_D`` None.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ganprune.core.errors import UserError
from ganprune.core.plugins import Registry, check_options
from ganprune.models.registry import d_input
from ganprune.train.losses import GAN_MODES, GANLoss

RECIPES = Registry("recipe")


def register_recipe(name: str):
    """Class decorator: make a ``Recipe`` subclass available as ``finetune(recipe=name)``."""
    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, Recipe)):
            raise TypeError(f"@register_recipe({name!r}) expects a Recipe subclass")
        cls.name = name
        return RECIPES.add(name, cls)
    return deco


def get_recipe(name: str) -> type:
    return RECIPES.lookup(name)


class Recipe:
    """Base class. Subclasses set ``OPTIONS`` (name → default; the default's type is the expected type)
    and implement ``generator_loss`` / ``discriminator_loss``; ``paired_only`` recipes refuse unpaired data.

    ``conditional_D``: whether the discriminators see cat(A, image) (pix2pix) or the image alone (CycleGAN);
    the trainer passes the D spec's fact, and without one it follows the data (paired: conditional).
    Attributes set by the trainer before each step: ``step`` (0-based) and ``steps`` (the target)."""

    name = "base"
    OPTIONS: dict = {}
    paired_only = False
    needs_teacher = True        # the recipe learns from the teacher's generator (pix2pix trains without one)
    needs_teacher_D = False     # the recipe learns from the teacher's discriminator
    uses_D = True               # False: G alone, no student D at all (student_D is None): supernet, distillation
    trains_student_D = True     # False: a student D is kept but never trained (an instance may set it from its options)

    def __init__(self, student_G: nn.Module, student_D: nn.Module, teacher_G: nn.Module | None,
                 teacher_D: nn.Module | None, paired: bool, options: dict | None = None,
                 conditional_D: bool | None = None):
        self.student_G, self.student_D = student_G, student_D
        self.teacher_G, self.teacher_D = teacher_G, teacher_D
        self.paired = bool(paired)
        self.conditional_D = self.paired if conditional_D is None else bool(conditional_D)
        self.options = self.check_options(options or {})
        self.step, self.steps = 0, 1
        self._closers = []
        if self.needs_teacher and teacher_G is None:
            raise UserError(f"recipe {self.name!r}: needs a teacher generator; 'pix2pix' trains without one")
        if self.needs_teacher_D and teacher_D is None:
            raise UserError(f"recipe {self.name!r}: needs the teacher's discriminator (--discriminator); a G "
                            "pruned alone fine-tunes with 'density', 'pix2pix' or 'cyclegan'")
        if self.paired_only and not self.paired:
            raise UserError(f"recipe {self.name!r}: needs paired (aligned) data; use 'density' or 'cyclegan' "
                            "for unpaired data")

    # ----------------------------------------------------------------------- options

    @classmethod
    def check_options(cls, options: dict) -> dict:
        merged = check_options(f"recipe {cls.name!r}", options, cls.OPTIONS)
        cls.validate(merged)
        return merged

    @classmethod
    def validate(cls, options: dict) -> None:
        """Range checks on the merged options (raise ``UserError``); the default checks GAN mode and weights."""
        if "gan_mode" in options and options["gan_mode"] not in GAN_MODES:
            raise UserError(f"recipe {cls.name!r} option gan_mode: expected one of {', '.join(GAN_MODES)}, "
                            f"got {options['gan_mode']!r}")
        for key, value in options.items():
            if key.startswith("lambda_") and value < 0:
                raise UserError(f"recipe {cls.name!r} option {key}: expected a weight >= 0, got {value!r}")

    # ----------------------------------------------------------------------- parts a recipe may own

    def extra_modules(self) -> dict[str, nn.Module]:
        """Recipe-owned networks whose state is checkpointed (trainable or not)."""
        return {}

    def generator_extras(self) -> list[nn.Module]:
        """Recipe modules trained by the generator optimizer (learning rate ``lr``)."""
        return []

    def discriminator_extras(self) -> list[nn.Module]:
        return []

    def extra_optimizers(self, lr: float, beta1: float) -> dict[str, torch.optim.Optimizer]:
        """Own optimizers, each with a phase ``extra_loss(name, out)``; built once, checkpointed, and
        their learning rates follow the same schedule. ``lr``/``beta1`` are the trainer's."""
        return {}

    def extra_loss(self, name: str, out: dict):
        raise NotImplementedError(f"recipe {self.name!r} has optimizer {name!r} but no extra_loss for it")

    def after_step(self) -> dict:
        """Called after all phases; may return extra logs."""
        return {}

    def taps(self, net: nn.Module, names: list[str]) -> "Taps":
        """Forward hooks on ``net`` that ``close`` removes again (the student nets are the caller's)."""
        taps = Taps(net, names)
        self._closers.append(taps.remove)
        return taps

    def close(self) -> None:
        """Remove every hook this recipe put on networks it does not own; the trainer calls it at the end."""
        while self._closers:
            self._closers.pop()()

    def state_dict(self) -> dict:
        """Recipe state beyond modules/optimizers (e.g. running averages), as plain tensors/numbers."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    # ----------------------------------------------------------------------- the losses

    def forward(self, batch: dict) -> dict:
        return {"A": batch["A"], "B": batch["B"], "fake": self.student_G(batch["A"])}

    def generator_loss(self, out: dict):
        raise NotImplementedError

    def discriminator_loss(self, out: dict):
        """Default: the pix2pix/CycleGAN loss of the student D (with ``self.gan``): real B vs the detached
        student output. Recipes that train D differently override it."""
        loss, real, fake = self.standard_d_loss(self.gan, self.student_D, out["A"], out["B"], out["fake"])
        return loss, {"D_real": real.detach(), "D_fake": fake.detach()}

    # ----------------------------------------------------------------------- helpers for subclasses

    def d_input(self, D: nn.Module, a: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """What D sees: cat(A, image) for a conditional D, else the image (``conditional_D``)."""
        return d_input(a, image, self.conditional_D)

    def teacher_output(self, a: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.teacher_G(a)

    def target(self, out: dict) -> torch.Tensor:
        """Reconstruction target: the real B for paired data, else the teacher's output (pseudo-target)."""
        if self.paired:
            return out["B"]
        if "teacher_fake" not in out:
            out["teacher_fake"] = self.teacher_output(out["A"]).detach()
        return out["teacher_fake"]

    def standard_d_loss(self, gan: GANLoss, D: nn.Module, a, real, fake):
        """½(D(real) → real + D(fake) → fake), the pix2pix/CycleGAN discriminator loss."""
        loss_real = gan(D(self.d_input(D, a, real)), True)
        loss_fake = gan(D(self.d_input(D, a, fake.detach())), False)
        return 0.5 * (loss_real + loss_fake), loss_real, loss_fake

    def adversarial(self, D: nn.Module, a, fake):
        """The generator's GAN loss against ``D`` (``self.gan``): D should call ``fake`` real."""
        return self.gan(D(self.d_input(D, a, fake)), True, for_discriminator=False)

    @staticmethod
    def l1(a, b):
        return F.l1_loss(a.float(), b.float())

    @staticmethod
    def trainable_copy(net: nn.Module) -> nn.Module:
        """A co-trained teacher is a copy: the caller's teacher object is never changed."""
        net = copy.deepcopy(net).train()
        net.requires_grad_(True)
        return net


class TeacherOutputDistillation:
    """Mixin for recipes that distil the teacher's output and tapped features (OMGD, DCD): the optional online
    teacher (``self.online``, an ``OnlineTeacher`` or None) trains in its own phases, and each forward gathers
    the student's and the teacher's tapped features (``self.s_taps``, ``self.t_taps``) beside the outputs."""

    def extra_optimizers(self, lr, beta1):
        return self.online.optimizers(lr, beta1) if self.online else {}

    def extra_loss(self, name, out):
        return self.online.loss(name, out)

    def forward(self, batch):
        out = super().forward(batch)
        out["student_feats"] = self.s_taps.features()
        if self.online:
            self.online.forward(out)
        else:
            out["teacher_fake"] = self.teacher_output(batch["A"])
        out["teacher_feats"] = [f.detach() for f in self.t_taps.features()]
        return out


class OnlineTeacher:
    """Trainable copies of the teacher G and D, trained alongside the student on the pix2pix loss
    (D: ½(D(A, B) → real + D(A, G_T(A)) → fake); G_T: GAN + λ_L1·|G_T(A) − B|₁) with the recipe's ``gan``:
    the "online" teacher of OMGD, DCD and GCC, whose student learns from this moving teacher. The
    caller's teacher is never changed. Phases ``teacher_D`` then ``teacher_G``; paired data only."""

    def __init__(self, rec: "Recipe", lambda_l1: float):
        if not rec.paired:
            raise UserError(f"recipe {rec.name!r}: the online teacher trains on paired (aligned) data; set "
                            "online=false for unpaired data")
        if rec.teacher_D is None:
            raise UserError(f"recipe {rec.name!r}: the online teacher needs the teacher's discriminator "
                            "(--discriminator); or set online=false")
        self.rec, self.lambda_l1 = rec, lambda_l1
        self.G, self.D = rec.trainable_copy(rec.teacher_G), rec.trainable_copy(rec.teacher_D)

    def modules(self) -> dict:
        return {"teacher_G": self.G, "teacher_D": self.D}

    def optimizers(self, lr, beta1) -> dict:
        return {"teacher_D": torch.optim.Adam(self.D.parameters(), lr=lr, betas=(beta1, 0.999)),
                "teacher_G": torch.optim.Adam(self.G.parameters(), lr=lr, betas=(beta1, 0.999))}

    def forward(self, out: dict) -> None:
        """``teacher_fake_grad`` (the teacher trains on it) and its detached ``teacher_fake``."""
        out["teacher_fake_grad"] = self.G(out["A"])
        out["teacher_fake"] = out["teacher_fake_grad"].detach()

    def loss(self, name: str, out: dict):
        rec, a = self.rec, out["A"]
        if name == "teacher_D":
            loss, real, fake = rec.standard_d_loss(rec.gan, self.D, a, out["B"], out["teacher_fake"])
            return loss, {"DT_real": real.detach(), "DT_fake": fake.detach()}
        adv = rec.adversarial(self.D, a, out["teacher_fake_grad"])
        l1 = rec.l1(out["teacher_fake_grad"], out["B"])
        return adv + self.lambda_l1 * l1, {"GT_adv": adv.detach(), "GT_L1": l1.detach()}


# --------------------------------------------------------------------------- feature taps (DCD, GCC, OMGD)

def connector(in_ch: int, out_ch: int) -> nn.Module:
    """1×1 conv (no bias) + BN + ReLU, He-initialised for the output side: the feature connector of OMGD's
    and DCD's code."""
    conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.BatchNorm2d(out_ch), nn.ReLU())


def generator_taps(G: nn.Module, n: int = 4) -> list[str]:
    """Names of ``n`` modules spread over a generator whose outputs are distilled: for a U-Net the
    decoder outputs of the ``n`` outermost inner levels (before the skip concat: widths ngf..8·ngf),
    for a ResNet the residual blocks spread over the trunk and the decoder's upsampling ReLUs. Module
    names survive pruning, so teacher and student get the same taps at their own widths."""
    from ganprune.models.networks import ResnetBlock, ResnetGenerator, UnetGenerator
    names = dict((m, k) for k, m in G.named_modules())
    if isinstance(G, UnetGenerator):
        taps, block = [], G.model
        while len(taps) < n:
            inner = [m for m in block.model if type(m).__name__ == "UnetSkipConnectionBlock"]
            if not inner:
                break
            block = inner[0]
            taps.append(names[block.model])
        if len(taps) == n:
            return taps
    elif isinstance(G, ResnetGenerator):
        blocks = [m for m in G.model if isinstance(m, ResnetBlock)]
        relus = [m for i, m in enumerate(G.model) if isinstance(m, nn.ReLU)
                 and i > 0 and isinstance(G.model[i - 2], nn.ConvTranspose2d)]
        pool = [blocks[0], blocks[len(blocks) // 2], blocks[-1]] + relus
        if len(pool) >= n:
            return [names[m] for m in pool[:n]]
    raise UserError(f"{type(G).__name__}: no {n} feature layers known for distillation (U-Net and ResNet "
                    "generators are supported)")


def discriminator_taps(D: nn.Module, n: int = 2) -> list[str]:
    """The activations after the last ``n`` hidden LeakyReLUs of a PatchGAN/pixel D (before the logits)."""
    acts = [k for k, m in D.named_modules() if isinstance(m, nn.LeakyReLU)]
    if len(acts) < n:
        raise UserError(f"{type(D).__name__}: fewer than {n} hidden activations to distil")
    return acts[-n:]


def tap_channels(net: nn.Module, name: str) -> int:
    """Channels of a tapped module's output: its last conv's, or the nearest conv before it."""
    modules = list(net.named_modules())
    index = next(i for i, (k, _) in enumerate(modules) if k == name)
    inside = [m for m in modules[index][1].modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    if inside:
        return inside[-1].out_channels
    before = [m for _, m in modules[:index] if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    return before[-1].out_channels


class Taps:
    """Forward hooks that keep the latest output of named modules (``taps.out[name]``)."""

    def __init__(self, net: nn.Module, names: list[str]):
        self.names, self.out = list(names), {}
        modules = dict(net.named_modules())
        self.handles = [modules[k].register_forward_hook(self._keep(k)) for k in self.names]

    def _keep(self, name):
        def hook(module, inputs, output):
            self.out[name] = output
        return hook

    def features(self) -> list[torch.Tensor]:
        return [self.out[k] for k in self.names]

    def remove(self):
        for h in self.handles:
            h.remove()
