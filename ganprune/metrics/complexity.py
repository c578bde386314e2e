"""MACs and parameter counts, from torch-pruning's counter (one forward pass on a copy of the model).

One counter for the whole project so that every table's "GMACs" means the same thing: multiply-
accumulates of convolutions and linear layers plus torch-pruning's small per-element charges for
norms and activations, at batch 1 unless the example input says otherwise.
"""
from __future__ import annotations

import torch
import torch_pruning as tp
from torch import nn


def macs_params(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """``(MACs, parameters)`` of one forward pass on ``example_input``; ``model`` is left untouched."""
    macs, params = tp.utils.count_ops_and_params(model, example_input)
    return int(macs), int(params)


def complexity(model: nn.Module, input_shape) -> dict:
    """``{"GMACs", "params_M", "macs", "params"}`` for a zero input of ``input_shape`` (e.g. ``(1, 3, 256, 256)``)."""
    device = next(model.parameters()).device
    macs, params = macs_params(model, torch.zeros(tuple(input_shape), device=device))
    return {"GMACs": macs / 1e9, "params_M": params / 1e6, "macs": macs, "params": params}
