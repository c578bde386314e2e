"""Physical pruning to exact widths, and pruned nets saved as plain data.

``prune`` removes whole channels with torch-pruning, group by group, keeping the most important ones,
so the result is an ordinary dense ``nn.Module`` (smaller convs), with unchanged output shapes.

A pruned net is saved as plain data (spec + widths + state dict), never as a pickled module: loading
rebuilds the dense net from its spec, prunes it to the saved widths, and loads the state dict strictly,
so a file can be read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import os
from dataclasses import dataclass
from typing import Mapping

import torch
import torch_pruning as tp
from torch import nn

from ganprune.core.errors import UserError
from ganprune.pruning.graph import coupled_groups, to_device, traced_graph

IMPORTANCES = ("l2", "l1", "bn_scale", "first")
FORMAT = "ganprune.pruned/1"


@dataclass
class PrunedInfo:
    """What ``prune`` and ``load_pruned`` know about a net they made, kept on it as ``net.ganprune_info``
    (read it with ``pruned_info(net)``): ``spec``, the dense net's build options (``save_pruned``'s spec,
    None until known); ``widths``, channels per group; ``input_shape``, the example input at batch 1
    that its graph is traced with."""
    spec: dict | None = None
    widths: dict | None = None
    input_shape: list | None = None


def pruned_info(net: nn.Module) -> PrunedInfo | None:
    """The ``PrunedInfo`` of a net made by ``prune``/``load_pruned`` (or given one), else None."""
    info = net.__dict__.get("ganprune_info")
    return info if isinstance(info, PrunedInfo) else None


def set_pruned_info(net: nn.Module, **fields) -> PrunedInfo:
    """Set some ``PrunedInfo`` fields of ``net`` (the others are kept); e.g. the spec of a dense net."""
    info = dataclasses.replace(pruned_info(net) or PrunedInfo(), **fields)
    net.ganprune_info = info
    return info


def prune(model: nn.Module, widths: Mapping[str, int], example_inputs, importance: str = "l2",
          ranking: Mapping[str, list[int]] | None = None) -> nn.Module:
    """A pruned deep copy of ``model`` with exactly ``widths`` channels per group (missing groups keep
    their full width); ``model`` itself is untouched.

    ``importance`` ranks the channels of each group over all its layers: ``"l2"``/``"l1"`` weight
    magnitude, ``"bn_scale"`` |γ| of its BatchNorms (``"l2"`` where it has none), or ``"first"`` (keep
    the first channels; for nets whose weights are about to be overwritten). ``ranking`` (from
    ``channel_ranking``) fixes each group's channel order up front instead: a search prunes the same
    teacher thousands of times, and ranking it once makes every candidate cheaper. The copy's
    ``pruned_info`` has its ``widths`` (every group) and ``input_shape`` (the example input's shape at
    batch 1; plain data, for saving and export)."""
    if importance not in IMPORTANCES:
        raise UserError(f"importance: expected one of {', '.join(IMPORTANCES)}, got {importance!r}")
    pruned = copy.deepcopy(model)
    device = next(iter(pruned.parameters()), torch.empty(0)).device
    _prune_in_place(pruned, widths, to_device(example_inputs, device), importance, ranking)
    return pruned


def channel_ranking(model: nn.Module, example_inputs, importance: str = "l2") -> dict[str, list[int]]:
    """Each group's channels of the dense ``model``, most important first (for ``prune(ranking=...)``)."""
    if importance not in IMPORTANCES:
        raise UserError(f"importance: expected one of {', '.join(IMPORTANCES)}, got {importance!r}")
    net = copy.deepcopy(model)
    device = next(iter(net.parameters()), torch.empty(0)).device
    DG = traced_graph(net, to_device(example_inputs, device))
    ranking = {}
    for g in coupled_groups(net, DG):
        fn = DG.get_pruner_of_module(g.root).prune_out_channels
        scores = _scores(DG.get_pruning_group(g.root, fn, list(range(g.full))), importance)
        ranking[g.name] = (list(range(g.full)) if scores is None
                           else torch.argsort(scores.cpu(), descending=True, stable=True).tolist())
    return ranking


def _scores(group, importance: str):
    if importance == "first":
        return None
    if importance == "bn_scale":
        scores = tp.importance.BNScaleImportance()(group)
        if scores is not None:
            return scores
    scores = tp.importance.MagnitudeImportance(p=1 if importance == "l1" else 2)(group)
    return None if scores is None else torch.nan_to_num(scores.float(), nan=0.0)


def _prune_in_place(net: nn.Module, widths: Mapping[str, int], example_inputs, importance: str,
                    ranking: Mapping[str, list[int]] | None = None) -> None:
    requires_grad = {name: p.requires_grad for name, p in net.named_parameters()}
    DG = traced_graph(net, example_inputs)
    groups = coupled_groups(net, DG)
    target = _resolve(groups, widths)
    for g in groups:
        keep = target[g.name]
        if keep == g.full:
            continue
        fn = DG.get_pruner_of_module(g.root).prune_out_channels
        if ranking is not None and g.name in ranking:
            drop = sorted(ranking[g.name][keep:])
        elif (scores := _scores(DG.get_pruning_group(g.root, fn, list(range(g.full))), importance)) is None:
            drop = list(range(keep, g.full))
        else:
            ranked = torch.argsort(scores.cpu(), descending=True, stable=True)
            drop = sorted(ranked[keep:].tolist())
        DG.get_pruning_group(g.root, fn, drop).prune()
        now = g.root.out_features if isinstance(g.root, nn.Linear) else g.root.out_channels
        if now != keep:
            raise RuntimeError(f"group {g.name}: pruned to {now} channels, expected {keep}")
    for name, p in net.named_parameters():
        p.requires_grad_(requires_grad.get(name, True))
    shape = [1, *example_inputs.shape[1:]] if torch.is_tensor(example_inputs) else None
    set_pruned_info(net, widths=dict(target), **({"input_shape": shape} if shape else {}))


def _resolve(groups, widths) -> dict[str, int]:
    if not isinstance(widths, Mapping):
        raise UserError(f"widths: expected a mapping of group name to channels, got {type(widths).__name__}")
    by_name = {g.name: g for g in groups}
    for name, w in widths.items():
        g = by_name.get(name)
        if g is None:
            raise UserError(f"widths: unknown group {name!r}; groups are: {', '.join(by_name)}")
        if isinstance(w, bool) or not isinstance(w, numbers.Integral) or not 1 <= w <= g.full:
            raise UserError(f"widths[{name!r}] = {w!r}: expected an integer from 1 to {g.full}")
        if w % g.multiple_of:
            raise UserError(f"widths[{name!r}] = {w}: must be a multiple of {g.multiple_of} (its GroupNorm groups)")
    return {g.name: int(widths.get(g.name, g.full)) for g in groups}


# --------------------------------------------------------------------------- save / load

def _plain(value, where: str) -> None:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return
    if isinstance(value, (list, tuple)):
        for v in value:
            _plain(v, where)
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise UserError(f"{where}: keys must be strings, got {k!r}")
            _plain(v, f"{where}.{k}")
        return
    raise UserError(f"{where}: must be plain data (str, number, bool, list, dict), got {type(value).__name__}")


def save_pruned(path, model: nn.Module, spec: Mapping, widths: Mapping[str, int], input_shape=None) -> None:
    """Write ``{"format", "spec", "widths", "input_shape", "state_dict"}`` atomically.

    ``spec`` holds the keyword arguments the dense net was built with (``{"arch": "unet_256", "ngf":
    64, "norm": "batch"}``); a bring-your-own ``"pkg.mod:Class"`` arch also needs ``"kind"``.
    ``input_shape`` (the example input the graph is traced with on load) defaults to the one recorded by
    ``prune``."""
    from ganprune.core.io import atomic_torch_save
    _check_spec(spec, "spec")
    _plain(dict(spec), "spec")
    info = pruned_info(model)
    input_shape = input_shape if input_shape is not None else (info.input_shape if info else None)
    if input_shape is None:
        raise UserError("save_pruned: input_shape unknown; pass the example input shape the net was pruned with")
    _check_input_shape(input_shape, "save_pruned: input_shape")
    data = {"format": FORMAT, "spec": dict(spec), "widths": {str(k): int(v) for k, v in widths.items()},
            "input_shape": [int(d) for d in input_shape],
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    atomic_torch_save(data, path)


# The example input is traced on load: a shape beyond any image a GAN is run on (4 dims, each side at most
# 16384 pixels, 2^27 values = 512 MiB of float32) is a damaged or hostile file, not a model.
_MAX_SIDE, _MAX_VALUES = 16384, 2 ** 27


def _check_input_shape(shape, where: str) -> None:
    ok = isinstance(shape, (list, tuple)) and len(shape) == 4 and all(
        isinstance(d, int) and not isinstance(d, bool) and 0 < d <= _MAX_SIDE for d in shape)
    if not ok or math.prod(shape) > _MAX_VALUES:
        raise UserError(f"{where}: expected 4 positive integers [N, C, H, W] (each at most {_MAX_SIDE}, "
                        f"at most {_MAX_VALUES:,} values), got {repr(shape)[:80]}")


def _check_spec(spec, where: str) -> None:
    if not isinstance(spec, Mapping) or not isinstance(spec.get("arch"), str):
        raise UserError(f"{where}: expected a mapping with an 'arch' string (e.g. {{'arch': 'unet_256', 'ngf': 64}})")
    if ":" in spec["arch"] and spec.get("kind") not in ("generator", "discriminator"):
        raise UserError(f"{where}: arch {spec['arch']!r} is your own class; add kind: generator or discriminator")


def load_pruned(path) -> nn.Module:
    """Rebuild a net saved by ``save_pruned``: dense from spec → prune to widths → strict state-dict load.
    Its ``pruned_info`` has the spec, widths and input shape; it is in eval mode."""
    from ganprune.models.checkpoint import load_state_strict, safe_torch_load
    from ganprune.models.registry import build, check_arch_allowed, kind_of
    source = os.fspath(path)
    data = safe_torch_load(source)
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise UserError(f"{source}: not a pruned-model file (expected a dict with format {FORMAT!r}; "
                        "plain checkpoints load with load_generator/load_discriminator)")
    for key, kind in (("spec", Mapping), ("widths", Mapping), ("input_shape", list), ("state_dict", Mapping)):
        if not isinstance(data.get(key), kind):
            raise UserError(f"{source}: field {key!r} missing or not a {kind.__name__.lower()}")
    spec, widths = dict(data["spec"]), dict(data["widths"])
    _check_input_shape(data["input_shape"], f"{source}: field 'input_shape'")
    _check_spec(spec, f"{source}: spec")
    check_arch_allowed(spec["arch"], f"{source}: spec")
    kind = spec.get("kind") or kind_of(spec["arch"])
    options = {k: v for k, v in spec.items() if k not in ("arch", "kind")}
    net = build(spec["arch"], kind, **options)
    try:
        _prune_in_place(net, widths, torch.zeros(data["input_shape"]), "first")
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    load_state_strict(net, data["state_dict"], source, {k: v for k, v in spec.items() if k != "kind"})
    set_pruned_info(net, spec=spec)
    return net.eval()   # ready for inference, like any loaded model; training code calls .train() itself
