"""The dense teacher pair a search, fine-tuning or NNI run starts from, and the options that build it."""
from __future__ import annotations

from typing import Mapping

from torch import nn

from ganprune.errors import UserError
from ganprune.options import pair_specs


def load_pair(teacher_dir=None, generator=None, discriminator=None, g_spec: dict | None = None,
              d_spec: dict | None = None) -> tuple[nn.Module, nn.Module, dict, dict]:
    """The dense teacher pair and the options that build it: from a ``train-teacher`` folder, or from two
    reference-format checkpoints plus their build options (``g_spec``/``d_spec``, e.g. ``{"arch": "unet_256"}``)."""
    if teacher_dir:
        from ganprune.teacher import load_teacher
        G, D, spec = load_teacher(teacher_dir)
        return G, D, dict(spec["G"]), dict(spec["D"])
    if not generator or not discriminator:
        raise UserError("give a teacher folder (--teacher) or both --generator and --discriminator checkpoints")
    from ganprune.models import load_discriminator, load_generator
    g_spec, d_spec = dict(g_spec or {}), dict(d_spec or {})
    return (load_generator(generator, **g_spec).eval(), load_discriminator(discriminator, **d_spec).eval(),
            g_spec, d_spec)


def pair_from_options(o: Mapping) -> tuple[nn.Module, nn.Module, dict, dict]:
    """``load_pair`` from resolved pair options (``ganprune.options.PAIR``: teacher, generator, g_arch, ...);
    class-path archs listed in ``allow_arch`` may then be imported when a file names them."""
    if o.get("allow_arch"):
        from ganprune.models.registry import allow_arch
        allow_arch(*o["allow_arch"])
    return load_pair(o["teacher"], o["generator"], o["discriminator"], *pair_specs(o))
