"""Architectures by name: ``build_generator("unet_256", ngf=64)``.

A decorator registry in the timm style. Names are unique across generators and discriminators, so a
saved ``spec`` (arch + keyword arguments) is enough to rebuild either kind. An ``arch`` of the form
``"package.module:ClassName"`` imports and builds any ``nn.Module`` (bring your own network) — but only
when the user named that path (``allow_arch``, the command line, or their own config): a spec read from a
file (a pruned model, a teacher folder, an NNI trial) can never choose which code is imported or run.
"""
from __future__ import annotations

import importlib
import re
from typing import Mapping

import torch
from torch import nn

from ganprune.core.errors import UserError
from ganprune.core.plugins import Registry
from ganprune.models.networks import NLayerDiscriminator, PixelDiscriminator, ResnetGenerator, UnetGenerator

GENERATORS = Registry("generator arch")
DISCRIMINATORS = Registry("discriminator arch")


def register_generator(name: str):
    return GENERATORS.register(name)


def register_discriminator(name: str):
    return DISCRIMINATORS.register(name)


def _unet(num_downs):
    def build(ngf=64, norm="batch", input_nc=3, output_nc=3, dropout=False):
        return UnetGenerator(input_nc, output_nc, num_downs, ngf=ngf, norm=norm, use_dropout=dropout)
    return build


def _resnet(n_blocks):
    def build(ngf=64, norm="batch", input_nc=3, output_nc=3, dropout=False, padding_type="reflect"):
        return ResnetGenerator(input_nc, output_nc, ngf=ngf, norm=norm, use_dropout=dropout,
                               n_blocks=n_blocks, padding_type=padding_type)
    return build


register_generator("unet_64")(_unet(6))
register_generator("unet_128")(_unet(7))
register_generator("unet_256")(_unet(8))
register_generator("resnet_6blocks")(_resnet(6))
register_generator("resnet_9blocks")(_resnet(9))


@register_discriminator("basic")
def _basic(ndf=64, norm="batch", input_nc=6, n_layers=3):
    # The reference "basic" D is always the 3-layer PatchGAN (70×70 receptive field); n_layers is
    # accepted so that one spec dict serves both names.
    return NLayerDiscriminator(input_nc, ndf, n_layers=3, norm=norm)


@register_discriminator("n_layers")
def _n_layers(ndf=64, norm="batch", input_nc=6, n_layers=3):
    return NLayerDiscriminator(input_nc, ndf, n_layers=n_layers, norm=norm)


@register_discriminator("pixel")
def _pixel(ndf=64, norm="batch", input_nc=6, n_layers=3):
    return PixelDiscriminator(input_nc, ndf, norm=norm)


# Class paths the user named; nothing else of the "module:Class" form is ever imported.
_ALLOWED_CLASS_PATHS: set[str] = set()
_CLASS_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def is_class_path(arch) -> bool:
    return isinstance(arch, str) and ":" in arch


def allow_arch(*archs: str) -> None:
    """Allow ``"package.module:ClassName"`` archs to be imported and built (the user names them).

    Registered names need no allowing. Called by the CLI for ``--arch/--g-arch/--d-arch`` and for
    ``g_arch``/``d_arch``/``allow_arch`` in the user's config, for ``allow_arch`` in the pipeline/NNI
    options, and by ``load_generator``/``load_discriminator`` for the arch passed to them."""
    for arch in archs:
        if not is_class_path(arch):
            continue
        if not _CLASS_PATH.match(arch):
            raise UserError(f"arch {arch!r}: expected 'package.module:ClassName'")
        _ALLOWED_CLASS_PATHS.add(arch)


def check_arch_allowed(arch, source: str) -> None:
    """Refuse a class-path arch that came from a file unless the user allowed it."""
    if is_class_path(arch) and arch not in _ALLOWED_CLASS_PATHS:
        raise UserError(f"{source}: arch {arch!r} names Python code, and ganprune imports a class only when you "
                        "name it yourself (--g-arch/--d-arch/--arch, --allow-arch or allow_arch: in your config, or "
                        "ganprune.allow_arch(...)); refused")


def _import_class(arch: str):
    if not _CLASS_PATH.match(arch):
        raise UserError(f"arch {arch!r}: expected 'package.module:ClassName'")
    module_name, _, attr = arch.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"arch {arch!r}: cannot import it ({exc})") from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise UserError(f"arch {arch!r} is a {type(obj).__name__}, expected a torch.nn.Module subclass; refused")
    return obj


SIZE_OPTIONS = ("ngf", "ndf", "input_nc", "output_nc", "n_layers")
MAX_SIZE = 1024     # no built-in net is sensible wider than this; a typo like 6400 would allocate gigabytes


def _check_sizes(kind: str, arch: str, kwargs: dict) -> None:
    """Widths, channel and layer counts of a built-in arch: whole numbers from 1 to MAX_SIZE (0 builds an
    empty net, a negative one fails deep in torch, a huge one allocates gigabytes first)."""
    for key in SIZE_OPTIONS:
        value = kwargs.get(key)
        if key in kwargs and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIZE):
            raise UserError(f"{kind} arch {arch!r}: {key} must be a whole number from 1 to {MAX_SIZE}, got {value!r}")


# Spec keys that describe a net rather than configure it: never passed to its constructor.
SPEC_FACTS = ("kind", "conditional")


def build(arch: str, kind: str, **kwargs) -> nn.Module:
    """Build a network by registered name or an allowed ``module:Class`` path; ``kind`` is
    "generator"/"discriminator". A spec's facts (``SPEC_FACTS``) are dropped, not passed on."""
    kwargs = {k: v for k, v in kwargs.items() if k not in SPEC_FACTS}
    if not isinstance(arch, str):
        raise UserError(f"{kind} arch must be a string, got {type(arch).__name__}")
    if is_class_path(arch):
        check_arch_allowed(arch, f"{kind} arch")
        try:
            return _import_class(arch)(**kwargs)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{kind} arch {arch!r} with options {kwargs}: {exc}") from None
    table = GENERATORS if kind == "generator" else DISCRIMINATORS
    factory = table.lookup(arch, hint=", or give 'package.module:ClassName'")
    _check_sizes(kind, arch, kwargs)
    try:
        return factory(**kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{kind} arch {arch!r} with options {kwargs}: {exc}") from None


def kind_of(arch: str) -> str:
    """Which registry an arch name belongs to (names are unique across both)."""
    if arch in GENERATORS:
        return "generator"
    if arch in DISCRIMINATORS:
        return "discriminator"
    raise UserError(f"unknown arch {arch!r}; choose one of {', '.join(sorted(GENERATORS) + sorted(DISCRIMINATORS))}")


def conditional_d(d_spec: Mapping | None, D: nn.Module | None = None, a_channels: int = 3,
                  b_channels: int = 3) -> bool:
    """Whether a discriminator sees cat(A, B) (pix2pix) or B alone (CycleGAN): the D spec's ``conditional``
    fact, set once when the pair is loaded (from ``--unconditional-d``/the data, or by ``with_conditional``).
    Only a spec without it (your own code calling the library) makes this read D's first conv."""
    if d_spec and d_spec.get("conditional") is not None:
        return bool(d_spec["conditional"])
    if D is None:
        return True
    conv = next((m for m in D.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise UserError(f"{type(D).__name__}: discriminator has no Conv2d layer")
    if conv.in_channels not in (a_channels + b_channels, b_channels):
        raise UserError(f"discriminator takes {conv.in_channels} channels, but the input has {a_channels} and the "
                        f"generator's output {b_channels} (expected {a_channels + b_channels} or {b_channels})")
    return conv.in_channels == a_channels + b_channels


def d_input(a, image, conditional: bool):
    """What a discriminator sees: cat(A, image) along the channels when it is conditional (pix2pix),
    else the image alone (CycleGAN)."""
    return torch.cat([a, image], 1) if conditional else image


def with_conditional(d_spec: Mapping | None, D: nn.Module | None, a_channels: int, b_channels: int) -> dict:
    """``d_spec`` with its ``conditional`` fact set (read from D once, here, when it is not given)."""
    return {**dict(d_spec or {}), "conditional": conditional_d(d_spec, D, a_channels, b_channels)}
