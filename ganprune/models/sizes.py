"""Image sizes a generator can take, said in one line before torch says it in its own words.

A U-Net with d downsamplings halves the image d times and concatenates each level with its mirror, so
height and width must be multiples of 2**d (and at least 2**d: the innermost level is 1×1). The ResNet
generator downsamples twice and upsamples with ``output_padding``, so only multiples of 4 come back at
the size they went in. Other (bring-your-own) classes have no known rule and are not checked here.
"""
from __future__ import annotations

from torch import nn

from ganprune.core.errors import UserError


def size_factor(net: nn.Module) -> tuple[int, str] | None:
    """``(factor, why)``: H and W must be positive multiples of ``factor``; None when no rule is known."""
    from ganprune.models.networks import ResnetGenerator, UnetGenerator, UnetSkipConnectionBlock
    if isinstance(net, UnetGenerator):
        depth = sum(isinstance(m, UnetSkipConnectionBlock) for m in net.modules())
        return 2 ** depth, f"a U-Net with {depth} downsamplings"
    if isinstance(net, ResnetGenerator):
        downs = sum(isinstance(m, nn.Conv2d) and m.stride == (2, 2) for m in net.modules())
        return 2 ** downs, f"a ResNet generator with {downs} downsamplings"
    return None


def nearest_sizes(factor: int, size: int) -> tuple[int, int]:
    """The valid sizes just below (at least ``factor``) and above ``size``."""
    below = max(factor, size // factor * factor)
    return below, below + factor


def check_image_size(net: nn.Module, height: int, width: int, label: str = "the generator") -> None:
    """Refuse, in one line that says the valid sizes, an image size ``net`` cannot take."""
    rule = size_factor(net)
    if rule is None:
        return
    factor, why = rule
    height, width = int(height), int(width)
    if height % factor or width % factor or height < factor or width < factor:
        near = nearest_sizes(factor, height)
        raise UserError(f"{label} cannot take {height}x{width} images: {why} needs height and width that are "
                        f"multiples of {factor}, at least {factor} (nearest: {' or '.join(map(str, near))}); "
                        "resize the images (--size) or use an arch made for this size")
