"""Fold inference-time BatchNorm into the convolution before it.

In eval mode a BatchNorm2d is a fixed per-channel affine map, so ``conv -> bn`` equals one conv with
rescaled weights and a new bias. Folding removes a memory-bound pass over every activation map, which
matters more after pruning: the convs shrink but the elementwise passes do not get cheaper per channel.

Only valid for inference: the folded network has no BatchNorm left to train or recalibrate.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (isinstance(conv, _CONVS) and type(bn) is nn.BatchNorm2d and bn.track_running_stats
            and bn.running_mean is not None and bn.running_var is not None
            and conv.out_channels == bn.num_features)


@torch.no_grad()
def _fold_pair(conv: nn.Module, bn: nn.BatchNorm2d) -> None:
    """Rewrite ``conv`` in place so that it computes ``bn(conv(x))`` with ``bn``'s running statistics."""
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(shift)

    weight = conv.weight.double()
    if isinstance(conv, nn.ConvTranspose2d):
        # ConvTranspose2d weight is [in, out / groups, kH, kW]; output channel g * (out / groups) + j
        # lives at group g's slice, column j.
        groups, out_per_group = conv.groups, conv.out_channels // conv.groups
        w = weight.view(groups, conv.in_channels // groups, out_per_group, *weight.shape[2:])
        w = w * scale.view(groups, 1, out_per_group, 1, 1)
        weight = w.view_as(weight)
    else:  # Conv2d weight is [out, in / groups, kH, kW]
        weight = weight * scale.view(-1, 1, 1, 1)

    dtype = conv.weight.dtype
    conv.weight.copy_(weight.to(dtype))
    new_bias = (bias * scale + shift).to(dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias)
    else:
        conv.bias.copy_(new_bias)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with every ``Conv -> BatchNorm2d`` pair folded into the conv.

    Pairs are found as adjacent children of an ``nn.Sequential`` (how the pix2pix / CycleGAN nets and
    most CNNs are written); a BatchNorm anywhere else, one without running statistics, or one whose
    width does not match the conv, is left as it is. The folded BatchNorm becomes ``nn.Identity`` so
    module names and indices stay valid. The input model is not modified.

    Only valid for inference: outputs match the original in eval mode (to float rounding), not in
    training mode, and the folded copy cannot be trained or BN-recalibrated further.
    """
    folded = copy.deepcopy(model).eval()
    done: set[int] = set()  # a conv shared by two pairs must be folded once at most
    for seq in list(folded.modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = seq._modules[first], seq._modules[second]
            if id(conv) not in done and _foldable(conv, bn):
                _fold_pair(conv, bn)
                done.add(id(conv))
                seq._modules[second] = nn.Identity()
    return folded


def count_batchnorm(model: nn.Module) -> int:
    """Number of BatchNorm2d layers left (0 after folding a pix2pix / CycleGAN net)."""
    return sum(type(m) is nn.BatchNorm2d for m in model.modules())
