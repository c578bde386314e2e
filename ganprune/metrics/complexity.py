"""MACs and parameter counts, from torch-pruning's counter (one forward pass on a copy of the model).

One counter for the whole project so that every table's "GMACs" means the same thing: multiply-
accumulates of convolutions and linear layers plus torch-pruning's small per-element charges for
norms and activations, at batch 1 unless the example input says otherwise.

That count follows the field's convention (GAN Compression's published figures use it): a transposed
conv is charged ``C_in · C_out/groups · k²`` at every *output* position, as if it were a conv. It
really does that work at every *input* position, and only for the taps that land inside the output: a
stride-2 one does about a quarter of what the convention charges. ``real_macs`` is the same count with
every transposed conv charged its real multiply-adds; tables show both, named (``MACS_NOTE``).
"""
from __future__ import annotations

import math

import torch
import torch_pruning as tp
from torch import nn

MACS_NOTE = ("GMACs: the field's convention, comparable with published figures (a transposed conv charged at "
             "its output positions, 4x its work at stride 2); real GMACs: the multiply-adds actually done")


def macs_params(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """``(MACs, parameters)`` of one forward pass on ``example_input``; ``model`` is left untouched."""
    macs, params = tp.utils.count_ops_and_params(model, example_input)
    return int(macs), int(params)


def _taps_inside(n_in: int, n_out: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Along one axis: (input position, kernel tap) pairs of a transposed conv that land in the output."""
    return sum(1 for i in range(n_in) for k in range(kernel) if 0 <= i * stride - padding + k * dilation < n_out)


def transposed_overcount(model: nn.Module, example_input: torch.Tensor) -> int:
    """How many more multiply-adds the convention charges ``model``'s transposed convs than they do."""
    extra = []

    def hook(m, inputs, output):
        x = inputs[0]
        conventional = math.prod(m.kernel_size) * math.prod(output.shape[2:])
        real = math.prod(_taps_inside(n_in, n_out, k, s, p, d) for n_in, n_out, k, s, p, d in zip(
            x.shape[2:], output.shape[2:], m.kernel_size, m.stride, m.padding, m.dilation))
        extra.append(x.shape[0] * m.in_channels * (m.out_channels // m.groups) * (conventional - real))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.modules.conv._ConvTransposeNd)]
    try:
        with torch.no_grad():
            was_training = model.training
            model.eval()
            try:
                model(example_input)
            finally:
                model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return int(sum(extra))


def complexity(model: nn.Module, input_shape) -> dict:
    """``{"GMACs", "params_M", "macs", "params", "real_macs", "real_GMACs"}`` for a zero input of
    ``input_shape`` (e.g. ``(1, 3, 256, 256)``): ``macs`` by the field's convention, ``real_macs`` as done."""
    device = next(model.parameters()).device
    x = torch.zeros(tuple(input_shape), device=device)
    macs, params = macs_params(model, x)
    real = macs - transposed_overcount(model, x)
    return {"GMACs": macs / 1e9, "params_M": params / 1e6, "macs": macs, "params": params, "real_macs": real,
            "real_GMACs": real / 1e9}
