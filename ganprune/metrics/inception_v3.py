"""The FID Inception-v3 in plain torch, so the pytorch-fid weights file loads without torchvision.

FID is defined by one network: TensorFlow's 2015-12-05 Inception graph. pytorch-fid ported it to a
state dict, ``pt_inception-2015-12-05-6726825d.pth``, laid out as torchvision's Inception-v3 but with
the graph's own quirks, which are what make FID numbers comparable across papers: average pools whose
mean leaves the zero padding out (``count_include_pad=False``), a *max* pool in the last block's pool
branch, BatchNorm eps 0.001 and a 1008-way classifier. ``FIDInceptionV3`` builds that network with the
same module names, so the file loads key for key; ``inception_from_state_dict`` checks a loaded file
and says which key is wrong. Like the bundled TorchScript (``fid_inception``), the network takes 299²
RGB in the TF range [-1, 127/128] and returns the 2048-d pool features; resizing and range mapping are
the caller's (``quality.InceptionStateDictFeatures``), so both weight sources see identical inputs.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ganprune.core.errors import UserError

BN_EPS = 1e-3
NUM_CLASSES = 1008
FEATURE_DIM = 2048
LAYOUT = "pytorch-fid pt_inception-2015-12-05 layout"
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "inception")


class FrozenBatchNorm(nn.Module):
    """BatchNorm that always normalises with its stored statistics.

    The FID network is never trained, so a parent's ``.train()`` must not switch it to batch
    statistics; and there is nothing to count, hence no ``num_batches_tracked``.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, BN_EPS)


class ConvBN(nn.Module):
    """Bias-free convolution → frozen BatchNorm → ReLU (pytorch-fid's ``BasicConv2d``: ``conv``, ``bn``)."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = FrozenBatchNorm(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """TF's SAME 3×3 average pool: border windows average only the pixels inside the image."""
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class MixedA(nn.Module):
    """35×35 block (Mixed_5b-d): 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avg-pool→1×1."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1 = ConvBN(cin, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x),
                          self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_tf_avg_pool(x))], 1)


class ReductionB(nn.Module):
    """35→17 reduction (Mixed_6a): 3×3/2 | 1×1→3×3→3×3/2 | max-pool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class MixedC(nn.Module):
    """17×17 block (Mixed_6b-e) with factorised 7×7s: 1×1 | 1×7→7×1 | (7×1→1×7)×2 | avg-pool→1×1."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        row, col = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, **row)
        self.branch7x7_3 = ConvBN(c7, 192, **col)
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_3 = ConvBN(c7, c7, **row)
        self.branch7x7dbl_4 = ConvBN(c7, c7, **col)
        self.branch7x7dbl_5 = ConvBN(c7, 192, **row)
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d7 = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d7 = conv(d7)
        return torch.cat([self.branch1x1(x), b7, d7, self.branch_pool(_tf_avg_pool(x))], 1)


class ReductionD(nn.Module):
    """17→8 reduction (Mixed_7a): 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | max-pool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(cin, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = conv(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class MixedE(nn.Module):
    """8×8 block (Mixed_7b, 7c): 1×1 | 1×1→(1×3, 3×1) | 1×1→3×3→(1×3, 3×1) | pool→1×1.

    The TF graph pools with an average in Mixed_7b but a max in Mixed_7c (``pool="max"``).
    """

    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.pool == "max" else _tf_avg_pool(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b), self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """[N, 3, 299, 299] in the TF range → [N, 2048] pool features; state dict keyed as pytorch-fid's.

    ``fc`` is the graph's 1008-way classifier: it is part of the weights file, so it is kept for a
    key-for-key round trip, but FID reads the features before it.
    """

    num_features = FEATURE_DIM

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.Mixed_5b = MixedA(192, 32)
        self.Mixed_5c = MixedA(256, 64)
        self.Mixed_5d = MixedA(288, 64)
        self.Mixed_6a = ReductionB(288)
        self.Mixed_6b = MixedC(768, 128)
        self.Mixed_6c = MixedC(768, 160)
        self.Mixed_6d = MixedC(768, 160)
        self.Mixed_6e = MixedC(768, 192)
        self.Mixed_7a = ReductionD(768)
        self.Mixed_7b = MixedE(1280, pool="avg")
        self.Mixed_7c = MixedE(2048, pool="max")
        self.fc = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def _plain_keys(obj, source: str) -> dict[str, torch.Tensor]:
    """The state dict inside ``obj``: unwrapped, ``module.`` prefixes and ``num_batches_tracked`` dropped."""
    state = obj
    if not _is_state_dict(obj):
        found = [k for k in _WRAPPER_KEYS if isinstance(obj, Mapping) and _is_state_dict(obj.get(k))]
        if not found:
            what = (f"found keys: {', '.join(map(str, list(obj)[:6]))}" if isinstance(obj, Mapping)
                    else f"found a {type(obj).__name__}")
            raise UserError(f"{source}: not FID weights: expected a TorchScript feature network or a state dict in "
                            f"the {LAYOUT} (plain or under {'/'.join(_WRAPPER_KEYS)}), {what}")
        state = obj[found[0]]
    return {k.removeprefix("module."): v for k, v in state.items() if not k.endswith(".num_batches_tracked")}


def inception_from_state_dict(obj, source: str = "FID weights") -> FIDInceptionV3:
    """``FIDInceptionV3`` (eval mode, frozen) from a loaded pytorch-fid state dict.

    Accepted: the plain file, one wrapped under ``state_dict``/``model``/..., and ``module.`` prefixes.
    Feature layers must match key for key and shape for shape; ``fc.*`` may be absent (unused);
    ``num_batches_tracked`` is ignored. Otherwise a one-line ``UserError`` names ``source`` and the
    first wrong key.
    """
    state = _plain_keys(obj, source)
    net = FIDInceptionV3()
    expected = net.state_dict()
    unexpected = [k for k in state if k not in expected]
    for key in expected:
        if key not in state and not key.startswith("fc."):
            hint = f"; found unexpected key {unexpected[0]!r}" if unexpected else ""
            raise UserError(f"{source}: missing key {key!r} of the FID Inception-v3 ({LAYOUT}){hint}")
    if unexpected:
        raise UserError(f"{source}: unexpected key {unexpected[0]!r} for the FID Inception-v3 ({LAYOUT})")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise UserError(f"{source}: key {key!r} has shape {list(value.shape)}, expected "
                            f"{list(expected[key].shape)} ({LAYOUT})")
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)   # only fc.* can be left out
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()
