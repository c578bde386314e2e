"""Which channels must be pruned together: torch-pruning's dependency graph of a net, traced on an example
input, cut into coupled groups (a conv and its norm, both sides of a U-Net skip concat, every conv
writing into the ResNet trunk share one width), with the reference nets' readable group names.

Channels that reach the model's output (the image channels of G, the logit of D) never form a group,
so output shapes never change. ``ganprune.pruning.space`` turns the groups into a search space with costs;
``ganprune.pruning.physical`` prunes along them.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Mapping

import torch
import torch_pruning as tp
from torch import nn

from ganprune.core.errors import UserError

ROOT_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


# --------------------------------------------------------------------------- dependency graph

class _InstanceNormPruner(tp.pruner.function.InstanceNormPruner):
    """torch-pruning's InstanceNorm pruner leaves running stats unsliced; older checkpoints have them."""

    def prune_out_channels(self, layer, idxs):
        if layer.track_running_stats and layer.running_mean is not None:
            keep = sorted(set(range(layer.num_features)) - set(int(i) for i in idxs))
            layer.running_mean = layer.running_mean.data[keep]
            layer.running_var = layer.running_var.data[keep]
        return super().prune_out_channels(layer, idxs)

    prune_in_channels = prune_out_channels


_IN_PRUNER = _InstanceNormPruner()
_CUSTOM_PRUNERS = {cls: _IN_PRUNER for cls in (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)}


def as_args(example_inputs):
    """torch-pruning calls ``model(*inputs)``: a bare tensor would be unpacked along its batch dim."""
    return (example_inputs,) if torch.is_tensor(example_inputs) else example_inputs


def to_device(obj, device):
    """Tensors in ``obj`` (a tensor, or nested lists/tuples/dicts) moved to ``device``."""
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def _shapes(obj):
    if torch.is_tensor(obj):
        return list(obj.shape)
    if isinstance(obj, Mapping):
        return {k: _shapes(v) for k, v in obj.items()}
    return [_shapes(v) for v in obj]


def forward(model, args):
    return model(**args) if isinstance(args, Mapping) else model(*args)


def dependency_graph(model: nn.Module, example_inputs) -> tp.DependencyGraph:
    """Trace ``model`` with autograd on (even under ``torch.no_grad``) and in-place activations off
    (an in-place ReLU after an affine-free InstanceNorm hides the norm from the trace, leaving its
    ``num_features`` stale after pruning), and every parameter requiring grad (the trace follows autograd,
    so a frozen teacher would otherwise show no groups). Flags and train/eval modes are restored."""
    inplace = [(m, m.inplace) for m in model.modules() if isinstance(getattr(m, "inplace", None), bool)]
    modes = [(m, m.training) for m in model.modules()]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for m, _ in inplace:
        m.inplace = False
    for p in frozen:
        p.requires_grad_(True)
    outputs = []

    def keep_outputs(out):
        outputs.extend(tp.utils.flatten_as_list(out))
        return out
    try:
        with torch.enable_grad():
            # forward_fn: torch-pruning's default retries a failed forward with other argument packing,
            # which hides the real error (e.g. an input too small for the net).
            DG = tp.DependencyGraph().build_dependency(model, as_args(example_inputs), forward_fn=forward,
                                                       output_transform=keep_outputs,
                                                       customized_pruners=_CUSTOM_PRUNERS, verbose=False)
        # Autograd nodes that produce the model's outputs: a layer whose own result is returned (D's last
        # conv) gets no separate output node in torch-pruning's graph, so it is recognised by these.
        DG.ganprune_output_fns = {o.grad_fn for o in outputs if torch.is_tensor(o) and o.grad_fn is not None}
        return DG
    except (RuntimeError, ValueError, TypeError) as exc:
        if next(iter(model.parameters()), torch.empty(0)).is_meta:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"example input of shape {_shapes(example_inputs)} does not run through "
                        f"{type(model).__name__}: {first}") from None
    finally:
        for m, flag in inplace:
            m.inplace = flag
        for m, flag in modes:
            m.training = flag
        for p in frozen:
            p.requires_grad_(False)


def traced_graph(model: nn.Module, example_inputs) -> tp.DependencyGraph:
    """``dependency_graph`` of ``model``, traced on a shape-only twin (no real forward: the trace
    costs milliseconds instead of a full forward with autograd) and then pointed at ``model``'s own
    modules and parameters. Falls back to tracing ``model`` if its forward cannot run on meta."""
    twin, twin_inputs = shape_only_copy(model, example_inputs)
    try:
        DG = dependency_graph(twin, twin_inputs)
    except Exception:
        return dependency_graph(model, example_inputs)
    twins = [*twin.named_modules(), *twin.named_parameters()]
    reals = [*model.named_modules(), *model.named_parameters()]
    mapping = {id(obj): real for (_, obj), (_, real) in zip(twins, reals)}

    def swap(obj):
        return mapping.get(id(obj), obj)

    DG.model = model
    DG.module2node = {swap(k): node for k, node in DG.module2node.items()}
    for node in DG.module2node.values():
        node.module = swap(node.module)
    DG._module2name = {swap(k): v for k, v in DG._module2name.items()}
    DG._param_to_name = {swap(k): v for k, v in DG._param_to_name.items()}
    DG.unwrapped_parameters = [type(u)(swap(u.parameters), u.pruning_dim) for u in DG.unwrapped_parameters]
    DG.ignored_params = [swap(p) for p in DG.ignored_params]
    DG.IGNORED_LAYERS_IN_TRACING = [swap(m) for m in DG.IGNORED_LAYERS_IN_TRACING]
    return DG


@dataclass
class CoupledChannels:
    """A group bound to one model instance: the conv whose output channels name and root it."""
    name: str
    root: nn.Module
    full: int
    multiple_of: int = 1   # widths must split evenly into the groups of any GroupNorm in the group


def coupled_groups(model: nn.Module, DG: tp.DependencyGraph) -> list[CoupledChannels]:
    """Prunable groups of ``model`` in module order. The root of each is its first conv/linear (in
    module order) whose output channels it holds, so names do not depend on torch-pruning's traversal."""
    order = {m: i for i, m in enumerate(model.modules())}
    paths = {m: p for p, m in model.named_modules()}
    nice = builtin_names(model)
    found = []
    for group in DG.get_all_groups(root_module_types=ROOT_TYPES):
        if any(isinstance(dep.target.module, tp.ops._OutputOp)
               or (dep.target.grad_fn in DG.ganprune_output_fns and DG.is_out_channel_pruning_fn(dep.handler))
               for dep, _ in group):
            continue  # its channels are the model's output channels
        members = [dep.target.module for dep, _ in group
                   if isinstance(dep.target.module, ROOT_TYPES) and dep.target.module in order
                   and DG.is_out_channel_pruning_fn(dep.handler)]
        root = min(members, key=order.__getitem__)
        full = root.out_features if isinstance(root, nn.Linear) else root.out_channels
        multiple_of = math.lcm(1, *(dep.target.module.num_groups for dep, _ in group
                                    if isinstance(dep.target.module, nn.GroupNorm)))
        found.append(CoupledChannels(nice.get(paths[root], paths[root]), root, full, multiple_of))
    found.sort(key=lambda g: order[g.root])
    names = [g.name for g in found]
    if len(set(names)) != len(names):
        raise RuntimeError(f"duplicate group names {names}")
    return found


def builtin_names(model: nn.Module) -> dict[str, str]:
    """Readable names for the convs of the built-in nets (module path → name); other nets: {}.

    U-Net: ``down<d>``/``up<d>`` by nesting depth d (1 = outermost; ``up1`` is the output layer).
    ResNet: ``stem``, ``down<i>``, ``trunk`` (last downsampling conv, tied to every block's output by
    the residual adds), ``block<i>.inner``, ``up<i>``. PatchGAN/PixelGAN: ``conv<i>`` in order."""
    from ganprune.models.networks import (NLayerDiscriminator, PixelDiscriminator, ResnetBlock, ResnetGenerator, UnetGenerator, UnetSkipConnectionBlock)
    modules = list(model.named_modules())
    convs = [(p, m) for p, m in modules if isinstance(m, nn.modules.conv._ConvNd)]
    if isinstance(model, UnetGenerator):
        blocks = [p for p, m in modules if isinstance(m, UnetSkipConnectionBlock)]
        return {p: f"{'up' if m.transposed else 'down'}{sum(p.startswith(b + '.') for b in blocks)}"
                for p, m in convs}
    if isinstance(model, (NLayerDiscriminator, PixelDiscriminator)):
        return {p: f"conv{i}" for i, (p, _) in enumerate(convs, 1)}
    if isinstance(model, ResnetGenerator):
        names, before, after, n_block = {}, [], [], 0
        for idx, child in model.model.named_children():
            if isinstance(child, ResnetBlock):
                n_block += 1
                inner = [p for p, m in child.conv_block.named_children() if isinstance(m, nn.Conv2d)]
                names[f"model.{idx}.conv_block.{inner[0]}"] = f"block{n_block}.inner"
                names[f"model.{idx}.conv_block.{inner[1]}"] = "trunk"
            elif isinstance(child, nn.modules.conv._ConvNd):
                (after if n_block else before).append(f"model.{idx}")
        for i, p in enumerate(before):
            names[p] = "stem" if i == 0 else ("trunk" if i == len(before) - 1 and n_block else f"down{i}")
        for i, p in enumerate(after[:-1], 1):
            names[p] = f"up{i}"
        if after:
            names[after[-1]] = "out"
        return names
    return {}


def shape_only_copy(model: nn.Module, example_inputs):
    """A copy on the meta device, made without copying any weight data."""
    memo = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo), to_device(example_inputs, "meta")
