"""Embeddings for the density objective: every generator output is mapped into a fixed feature space,
the same map for teacher and student (pooled pixels, frozen teacher-D features, FID-Inception features).

An embedding is a registered factory ``factory(teacher_D=None, conditional_D=True, **options) -> module``
whose ``forward(images, inputs)`` gives [N, d]. ``teacher_D``/``conditional_D`` are what the run knows
about the teacher's discriminator (passed only to factories that name them); the other keyword
arguments with defaults are the embedding's options, checked like every plug-in's options
(``ganprune.core.plugins.check_options``: the default's type is the option's type).
"""
from __future__ import annotations

import copy
import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from ganprune.core.errors import UserError
from ganprune.core.plugins import Registry, check_options
from ganprune.models.registry import d_input

EMBEDDINGS = Registry("embedding")
_CONTEXT = ("teacher_D", "conditional_D")   # what the run passes; never user options


def register_embedding(name: str):
    """Register ``factory(teacher_D=None, **options) -> module`` whose forward(images, inputs) gives [N, d]."""
    return EMBEDDINGS.register(name)


def embedding_options(name: str) -> dict:
    """The options of embedding ``name`` and their defaults, read from its factory's signature."""
    params = inspect.signature(EMBEDDINGS.lookup(name)).parameters.values()
    return {p.name: (None if p.default is inspect.Parameter.empty else p.default)
            for p in params if p.name not in _CONTEXT and p.kind is not p.VAR_KEYWORD}


def build_embedding(name: str, options: dict | None = None, teacher_D=None, conditional_D: bool = True) -> nn.Module:
    """The embedding module ``name`` with its checked ``options``."""
    factory = EMBEDDINGS.lookup(name)
    checked = check_options(f"embedding {name!r}", options or {}, embedding_options(name))
    params = inspect.signature(factory).parameters
    context = {k: v for k, v in (("teacher_D", teacher_D), ("conditional_D", conditional_D)) if k in params}
    return factory(**context, **checked)


class PixelEmbedding(nn.Module):
    """Average-pool the output to ``size``×``size`` and flatten: cheap, and blind to sub-pool detail."""

    def __init__(self, size: int = 16):
        super().__init__()
        if not isinstance(size, int) or size < 1:
            raise UserError(f"embedding option size: expected a positive integer, got {size!r}")
        self.size = size

    def forward(self, images, inputs):
        return F.adaptive_avg_pool2d(images.float(), self.size).flatten(1)


class DiscriminatorEmbedding(nn.Module):
    """Activations of a frozen copy of the teacher D, each pooled to ``pool``×``pool``, concatenated.

    D has learned which output statistics matter for this dataset, so its features weigh texture and
    local structure that pooled pixels average away. Each level is divided by √(its size) so every
    level counts by its RMS activation, not by its width. A conditional pix2pix D sees cat(x̃, G(x̃)), the
    pair it was trained on; an unconditional (CycleGAN) D sees G(x̃) alone (``conditional``: the D spec's
    fact, set once when the pair is loaded).
    """

    def __init__(self, teacher_D: nn.Module, pool: int = 4, layers=None, conditional: bool = True):
        super().__init__()
        if not isinstance(pool, int) or pool < 1:
            raise UserError(f"embedding option pool: expected a positive integer, got {pool!r}")
        net = copy.deepcopy(teacher_D).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        convs = [mod for mod in net.modules() if isinstance(mod, nn.Conv2d)]
        acts = [mod for mod in net.modules() if isinstance(mod, (nn.LeakyReLU, nn.ReLU))]
        if not convs or not acts:
            raise UserError("teacher_D: expected a convolutional discriminator with (Leaky)ReLU activations")
        if layers is None:
            layers = list(range(len(acts)))
        layers = [layers] if isinstance(layers, int) else list(layers)
        if not layers or any(not isinstance(i, int) or not -len(acts) <= i < len(acts) for i in layers):
            raise UserError(f"embedding option layers: expected indices into the {len(acts)} activations of teacher_D, got {layers!r}")
        self.net, self.pool, self.conditional = net, pool, bool(conditional)
        self.in_channels = convs[0].in_channels   # checked against what D is given, never used to guess
        self._captured: list[torch.Tensor] = []
        for i in sorted({i % len(acts) for i in layers}):
            acts[i].register_forward_hook(self._capture)   # a bound method: deep copies rebind it

    def _capture(self, module, inputs, output):
        self._captured.append(output)

    def train(self, mode: bool = True):
        super().train(mode)
        self.net.eval()   # frozen teacher: BatchNorm keeps its running statistics
        return self

    def forward(self, images, inputs):
        d_in = d_input(inputs.to(images.dtype), images, self.conditional)
        if d_in.shape[1] != self.in_channels:
            kind = "a conditional D gets cat(input, output)" if self.conditional else "an unconditional D gets the output"
            raise UserError(f"teacher_D: its first conv takes {self.in_channels} channels, but {kind}: "
                            f"{d_in.shape[1]} channels here (set --unconditional-d / conditional_D to match the D)")
        self._captured.clear()
        self.net(d_in)
        feats = [F.adaptive_avg_pool2d(a.float(), self.pool).flatten(1) for a in self._captured]
        self._captured.clear()
        return torch.cat([f / math.sqrt(f.shape[1]) for f in feats], 1)


class InceptionEmbedding(nn.Module):
    """FID-Inception 2048-d pool features: the space FID is measured in (≈5.7 GMACs per image)."""

    def __init__(self):
        super().__init__()
        from ganprune.metrics.fid_inception import FIDInceptionFeatures
        self.net = FIDInceptionFeatures(input_range=(-1.0, 1.0))

    def forward(self, images, inputs):
        return self.net(images)


@register_embedding("pixels")
def _pixels(teacher_D=None, size: int = 16):
    return PixelEmbedding(size)


@register_embedding("teacher_d")
def _teacher_d(teacher_D=None, conditional_D: bool = True, pool: int = 4, layers=None):
    if teacher_D is None:
        raise UserError("embedding 'teacher_d' needs the teacher discriminator (teacher_D=...)")
    return DiscriminatorEmbedding(teacher_D, pool, layers, conditional=conditional_D)


@register_embedding("inception")
def _inception(teacher_D=None):
    return InceptionEmbedding()
