"""The dense teacher pair a search, fine-tuning or NNI run starts from, and the options that build it."""
from __future__ import annotations

from typing import Mapping

from torch import nn

from ganprune.core.errors import UserError
from ganprune.core.options import pair_specs


def load_pair(teacher_dir=None, generator=None, discriminator=None, g_spec: dict | None = None,
              d_spec: dict | None = None) -> tuple[nn.Module, nn.Module | None, dict, dict]:
    """The dense teacher pair and the options that build it: from a ``train-teacher`` folder, or from
    reference-format checkpoints plus their build options (``g_spec``/``d_spec``, e.g. ``{"arch": "unet_256"}``).

    Without a ``discriminator`` checkpoint (the reference project's downloads ship only ``latest_net_G.pth``)
    D is None: the search scores G alone and fine-tuning trains a fresh D built from ``d_spec``.
    The returned D spec carries ``conditional`` (D sees cat(A, B)): given, or read from D here, once."""
    from ganprune.models.registry import with_conditional
    if teacher_dir:
        from ganprune.train.teacher import load_teacher
        G, D, spec = load_teacher(teacher_dir)
        g_spec = dict(spec["G"])
        return G, D, g_spec, with_conditional(spec["D"], D, g_spec["input_nc"], g_spec["output_nc"])
    if not generator:
        raise UserError("give a teacher folder (--teacher) or a --generator checkpoint (--discriminator too, "
                        "if you have it)")
    from ganprune.models.checkpoint import load_discriminator, load_generator
    g_spec, d_spec = dict(g_spec or {}), dict(d_spec or {})
    D = load_discriminator(discriminator, **d_spec).eval() if discriminator else None
    if D is not None or "conditional" in d_spec:
        d_spec = with_conditional(d_spec, D, g_spec.get("input_nc", 3), g_spec.get("output_nc", 3))
    return load_generator(generator, **g_spec).eval(), D, g_spec, d_spec


def fresh_discriminator(d_spec: Mapping, seed: int = 0) -> nn.Module:
    """A newly initialised D built from ``d_spec`` (seeded: reruns start from the same weights), for
    fine-tuning a generator pruned without its discriminator."""
    import torch

    from ganprune.models.checkpoint import load_discriminator
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return load_discriminator(None, **dict(d_spec))


def pair_from_options(o: Mapping) -> tuple[nn.Module, nn.Module, dict, dict]:
    """``load_pair`` from resolved pair options (``ganprune.core.options.PAIR``: teacher, generator, g_arch, ...);
    class-path archs listed in ``allow_arch`` may then be imported when a file names them."""
    if o.get("allow_arch"):
        from ganprune.models.registry import allow_arch
        allow_arch(*o["allow_arch"])
    return load_pair(o["teacher"], o["generator"], o["discriminator"], *pair_specs(o))
