"""Architectures by name: ``build_generator("unet_256", ngf=64)``.

A decorator registry in the timm style. Names are unique across generators and discriminators, so a
saved ``spec`` (arch + keyword arguments) is enough to rebuild either kind. An ``arch`` of the form
``"package.module:ClassName"`` imports and builds any ``nn.Module`` (bring your own network).
"""
from __future__ import annotations

import importlib
from typing import Callable

from torch import nn

from ganprune.errors import UserError
from ganprune.models.networks import (NLayerDiscriminator, PixelDiscriminator, ResnetGenerator,
                                      UnetGenerator)

GENERATORS: dict[str, Callable[..., nn.Module]] = {}
DISCRIMINATORS: dict[str, Callable[..., nn.Module]] = {}


def register_generator(name: str):
    def deco(fn):
        GENERATORS[name] = fn
        return fn
    return deco


def register_discriminator(name: str):
    def deco(fn):
        DISCRIMINATORS[name] = fn
        return fn
    return deco


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


def _import_class(arch: str):
    module_name, _, attr = arch.partition(":")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"arch {arch!r}: cannot import it ({exc})") from None
    return obj


def build(arch: str, kind: str, **kwargs) -> nn.Module:
    """Build a network by registered name or ``module:Class`` path; ``kind`` is "generator"/"discriminator"."""
    if ":" in arch:
        net = _import_class(arch)(**kwargs)
        if not isinstance(net, nn.Module):
            raise UserError(f"arch {arch!r} built a {type(net).__name__}, expected a torch.nn.Module")
        return net
    table = GENERATORS if kind == "generator" else DISCRIMINATORS
    if arch not in table:
        raise UserError(f"unknown {kind} arch {arch!r}; choose one of {', '.join(sorted(table))} "
                        "or give 'package.module:ClassName'")
    try:
        return table[arch](**kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{kind} arch {arch!r} with options {kwargs}: {exc}") from None


def kind_of(arch: str) -> str:
    """Which registry an arch name belongs to (names are unique across both)."""
    if arch in GENERATORS:
        return "generator"
    if arch in DISCRIMINATORS:
        return "discriminator"
    raise UserError(f"unknown arch {arch!r}; choose one of {', '.join(sorted(GENERATORS) + sorted(DISCRIMINATORS))}")
