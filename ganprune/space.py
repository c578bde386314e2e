"""The search space of a G or D: which channel widths can be chosen, and what each choice costs.

Groups come from torch-pruning's DependencyGraph: channels that must be pruned together (a conv and its
norm, both sides of a U-Net skip concat, every conv writing into the ResNet trunk) share one width.
Channels that reach the model's output (the image channels of G, the logit of D) never form a group, so
output shapes never change.

``macs``/``params`` predict ``torch_pruning.utils.count_ops_and_params`` of the physically pruned model
without pruning anything. Every channel count in a conv net is an affine function of the group widths,
and every counted quantity (conv/linear MACs, norm/activation/pool/upsample element counts, parameter
numels) is a product of at most two such counts. So each is a quadratic form ``e·Q·e`` with
``e = [1, w_1, ..., w_n]``. ``Q`` is measured once: a shape-only (meta-device) copy is pruned by one
channel per group in turn, and after each step we record, per counted layer call, the numbers that the
counter's own formula multiplies. Prediction is then one small integer matrix product (microseconds).
"""
from __future__ import annotations

import copy
import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.utils import op_counter

from ganprune import search_spaces
from ganprune.errors import UserError

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


def _forward(model, args):
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
            DG = tp.DependencyGraph().build_dependency(model, as_args(example_inputs), forward_fn=_forward,
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
    twin, twin_inputs = _shape_only_copy(model, example_inputs)
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
    from ganprune.models.networks import (NLayerDiscriminator, PixelDiscriminator, ResnetBlock,
                                          ResnetGenerator, UnetGenerator, UnetSkipConnectionBlock)
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


# --------------------------------------------------------------------------- cost measurement

def _counted_terms(module: nn.Module, inputs, output) -> list[tuple[int, int, int]]:
    """What the counter adds for one call, as ``(constant, a, b)`` terms summing ``constant·a·b``,
    where ``a``/``b`` are the channel-dependent numbers its formula uses."""
    hook = op_counter.MODULES_MAPPING[type(module)]
    x = inputs[0]
    if hook is op_counter.conv_flops_counter_hook:
        positions = x.shape[0] * math.prod(output.shape[2:])
        terms = [(math.prod(module.kernel_size) * positions, module.in_channels,
                  module.out_channels // module.groups)]
        return terms + ([(positions, module.out_channels, 1)] if module.bias is not None else [])
    if hook is op_counter.linear_flops_counter_hook:
        return [(1, x.numel(), output.shape[-1])] + ([(1, output.shape[-1], 1)] if module.bias is not None else [])
    if hook is op_counter.bn_flops_counter_hook:
        return [(2 if module.affine else 1, x.numel(), 1)]
    if hook is op_counter.ln_flops_counter_hook:
        return [(2 if module.elementwise_affine else 1, x.numel(), 1)]
    if hook is op_counter.relu_flops_counter_hook:
        return [(1, output.numel(), 1)]
    if hook is op_counter.pool_flops_counter_hook:
        return [(1, x.numel(), 1)]
    if hook is op_counter.upsample_flops_counter_hook:
        return [(1, output[0].numel(), 1)]
    raise UserError(f"{type(module).__name__}: MACs prediction supports conv, linear, norm, activation, "
                    "pooling and upsampling layers only")


_SHAPE_PRESERVING = {nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.PReLU, nn.Tanh, nn.Sigmoid, nn.Identity,
                     nn.Dropout, nn.Dropout2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d,
                     nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm}


def _identity(x):
    return x


def _measure(model: nn.Module, example_inputs):
    """One forward: (per-term constants, the two numbers of each term, parameter shapes, batch size)."""
    counted = {m for m in model.modules() if op_counter.is_supported_instance(m)}
    skip = {sub for m in counted for sub in m.modules() if sub is not m}  # the counter stops at counted modules
    consts, factors, batch = [], [], []

    def record(module, inputs, output):
        for const, a, b in _counted_terms(module, inputs, output):
            consts.append(const)
            factors.extend((int(a), int(b)))

    handles = [m.register_forward_hook(record) for m in counted - skip]
    handles.append(model.register_forward_hook(lambda m, i, o: batch.append(len(i[0]) if len(i) else 1)))
    # Only shapes matter here: run shape-preserving layers as identities (on the meta device their
    # kernels are slow Python decompositions; this makes a measuring pass several times faster).
    passthrough = [m for m in model.modules() if type(m) in _SHAPE_PRESERVING]
    for m in passthrough:
        m.forward = _identity
    try:
        with torch.no_grad():
            _forward(model, as_args(example_inputs))
    finally:
        for h in handles:
            h.remove()
        for m in passthrough:
            del m.forward
    shapes = [list(p.shape) for p in model.parameters()]
    return consts, factors, shapes, batch[0]


def _shape_only_copy(model: nn.Module, example_inputs):
    """A copy on the meta device, made without copying any weight data."""
    memo = {}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo), to_device(example_inputs, "meta")


def _probe(model: nn.Module, example_inputs):
    """Groups of ``model`` and the affine forms of every measured number (mutates ``model``)."""
    DG = dependency_graph(model, example_inputs)
    groups = coupled_groups(model, DG)
    consts, factors, shapes, batch = _measure(model, example_inputs)
    rows = [factors + [d for s in shapes for d in s]]
    for g in groups:  # cumulative: step k removes one channel of group k
        if g.full > 1:
            fn = DG.get_pruner_of_module(g.root).prune_out_channels
            DG.get_pruning_group(g.root, fn, [g.full - 1]).prune()
            c, f, s, _ = _measure(model, example_inputs)
            if c != consts or [len(x) for x in s] != [len(x) for x in shapes]:
                raise RuntimeError(f"pruning group {g.name} changed the layer structure; cannot predict MACs")
            rows.append(f + [d for x in s for d in x])
        else:
            rows.append(rows[-1])
    values = np.array(rows, dtype=np.int64)                # (1 + n_groups) × n_numbers
    slope = values[:-1] - values[1:]                       # drop per removed channel of each group
    fulls = np.array([g.full for g in groups], dtype=np.int64)
    forms = np.concatenate([(values[0] - fulls @ slope)[None], slope]).T  # n_numbers × (1 + n_groups)
    n_factors = len(factors)
    macs_q = _quadratic(forms, np.array(consts, dtype=np.int64), np.arange(0, n_factors, 2), np.arange(1, n_factors, 2))
    params_q = _params_quadratic(forms[n_factors:], values[:, n_factors:], shapes)
    return [(g.name, g.full, g.multiple_of) for g in groups], macs_q, params_q, batch


def _quadratic(forms, consts, ia, ib):
    return (forms[ia] * consts[:, None]).T @ forms[ib]


def _params_quadratic(forms, values, shapes):
    """Each parameter's numel: the product of its shape dims, of which at most two depend on widths."""
    n = forms.shape[1]
    one = np.zeros(n, dtype=np.int64)
    one[0] = 1
    q = np.zeros((n, n), dtype=np.int64)
    at = 0
    for shape in shapes:
        dims = range(at, at + len(shape))
        varying = [d for d in dims if (values[:, d] != values[0, d]).any()]
        const = math.prod(values[0, d] for d in dims if d not in varying)
        if len(varying) > 2:
            raise UserError(f"a parameter of shape {shape} has more than two width-dependent dims; "
                            "cannot predict params")
        a, b = [forms[d] for d in varying] + [one] * (2 - len(varying))
        q += const * np.outer(a, b)
        at += len(shape)
    return q


# --------------------------------------------------------------------------- the space

@dataclass(frozen=True)
class Group:
    name: str                  # "down2", "trunk", "block3.inner"; other nets: module path of the root conv
    full: int                  # full width (channels)
    choices: tuple[int, ...]   # allowed widths, ascending, ends with full; a frozen group has (full,)


def allowed_widths(full: int, fractions=None, widths=None, min_width: int = 4, round_to: int = 8) -> tuple[int, ...]:
    """Width choices of one group. Fractions of ``full`` are rounded to multiples of ``round_to`` when
    ``full >= 2·round_to`` (narrow groups round to whole channels), never below ``min_width`` (a group
    narrower than that keeps only ``full``), deduplicated; ``full`` is always allowed."""
    if widths is not None:
        return tuple(sorted(set(widths) | {full}))
    rounding = full >= 2 * round_to
    step = round_to if rounding else 1
    lowest = min(full, -(-min_width // step) * step)
    out = {full}
    for f in fractions:
        out.add(min(full, max(lowest, step * int(f * full / step + 0.5))))
    return tuple(sorted(out))


class SearchSpace:
    """Prunable groups of one network with their allowed widths, and exact MACs/params of any widths.

    Widths are ``{group name: channels}``; a group missing from the dict is at its full width.
    MACs are per sample: ``count_ops_and_params`` of the pruned net at a batch of one (a tensor
    example input is cut to its first sample; other inputs: the counter's total over their batch)."""

    def __init__(self, groups: list[Group], macs_q, params_q, batch: int = 1, arch=None, source: str = ""):
        self.groups = list(groups)
        self.arch, self.source, self.batch = arch, source, batch
        self._index = {g.name: i + 1 for i, g in enumerate(self.groups)}
        self._full = np.array([1] + [g.full for g in self.groups], dtype=np.int64)
        self._macs_q, self._params_q = macs_q, params_q

    @classmethod
    def from_model(cls, model: nn.Module, example_inputs, arch=None, config=None) -> "SearchSpace":
        """Groups and cost forms of ``model``; choices from ``config`` (a YAML path or dict), else
        ``search_spaces/<arch>.yaml``, else fractions 1/8…1 of full width. ``model`` is not modified."""
        rules, source = search_spaces.load(arch, config)
        if torch.is_tensor(example_inputs) and example_inputs.dim() > 1 and len(example_inputs) > 1:
            example_inputs = example_inputs[:1]  # per-sample costs, as the counter reports them at batch 1
        try:
            measured = _probe(*_shape_only_copy(model, example_inputs))
        except UserError:
            raise
        except Exception:  # a forward that needs real data (e.g. .item()), or a bad input: try a real copy
            measured = _probe(copy.deepcopy(model), example_inputs)
            warnings.warn(f"{type(model).__name__} does not run on the meta device; costs were measured on a "
                          "real copy (slower)", stacklevel=2)
        raw, macs_q, params_q, batch = measured
        return cls(_apply_rules(raw, rules, source), macs_q, params_q, batch, arch, source)

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.groups]

    def full_widths(self) -> dict[str, int]:
        return {g.name: g.full for g in self.groups}

    def _vector(self, widths: Mapping[str, int]) -> np.ndarray:
        e = self._full.copy()
        for name, w in widths.items():
            i = self._index.get(name)
            if i is None:
                raise UserError(f"widths: unknown group {name!r}; groups are: {', '.join(self._index)}")
            if isinstance(w, bool) or not isinstance(w, numbers.Integral) or not 1 <= w <= e[i]:
                raise UserError(f"widths[{name!r}] = {w!r}: expected an integer from 1 to {e[i]}")
            e[i] = w
        return e

    def _per_sample(self, total: int) -> int:
        return total if self.batch == 1 else round(total / self.batch)

    def macs(self, widths: Mapping[str, int]) -> int:
        """MACs of the model pruned to ``widths``, as ``count_ops_and_params`` counts them."""
        e = self._vector(widths)
        return self._per_sample(int(e @ self._macs_q @ e))

    def params(self, widths: Mapping[str, int]) -> int:
        """Parameter count of the model pruned to ``widths``."""
        e = self._vector(widths)
        return int(e @ self._params_q @ e)

    def validate(self, widths: Mapping[str, int]) -> dict[str, int]:
        """Full widths dict (missing groups at full width); every width must be an allowed choice."""
        if not isinstance(widths, Mapping):
            raise UserError(f"widths: expected a mapping of group name to channels, got {type(widths).__name__}")
        self._vector(widths)
        out = self.full_widths()
        for g in self.groups:
            if g.name in widths:
                w = int(widths[g.name])
                if w not in g.choices:
                    raise UserError(f"widths[{g.name!r}] = {w} is not an allowed choice "
                                    f"(allowed: {', '.join(map(str, g.choices))})")
                out[g.name] = w
        return out

    def uniform(self, fraction: float) -> dict[str, int]:
        """Every group at its allowed choice nearest ``fraction``·full (ties go to the wider)."""
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise UserError(f"fraction: expected a number in (0, 1], got {fraction!r}")
        return {g.name: min(g.choices, key=lambda c: (abs(c - fraction * g.full), -c)) for g in self.groups}

    def share(self, name: str) -> tuple[float, float]:
        """Fractions of dense MACs and params in layers whose channels this group sets."""
        e = self._full.copy()
        e[self._index[name]] = 0
        full_e = self._full
        out = []
        for q in (self._macs_q, self._params_q):
            dense = int(full_e @ q @ full_e)
            out.append((dense - int(e @ q @ e)) / dense if dense else 0.0)
        return out[0], out[1]

    def table(self):
        """Groups as a DataFrame: name, full width, choices, MACs and params share."""
        import pandas as pd
        rows = []
        for g in self.groups:
            macs_share, params_share = self.share(g.name)
            rows.append({"group": g.name, "full": g.full, "choices": " ".join(map(str, g.choices)),
                         "MACs share %": round(100 * macs_share, 2), "params share %": round(100 * params_share, 2)})
        return pd.DataFrame(rows, columns=["group", "full", "choices", "MACs share %", "params share %"])

    def to_dict(self) -> dict:
        """Plain data: groups with full width and choices, dense MACs and params."""
        full = self.full_widths()
        return {"arch": self.arch, "source": self.source,
                "groups": [{"name": g.name, "full": g.full, "choices": list(g.choices)} for g in self.groups],
                "macs": self.macs(full), "params": self.params(full)}

    def __repr__(self) -> str:
        return f"SearchSpace({self.arch or 'model'}: {len(self.groups)} groups, {self.macs({}) / 1e9:.3f} GMACs)"


def _apply_rules(raw: list[tuple[str, int, int]], rules: dict, source: str) -> list[Group]:
    names = [name for name, _, _ in raw]
    for where, name in [("freeze", n) for n in rules["freeze"]] + [(f"groups.{n}", n) for n in rules["groups"]]:
        if name not in names:
            raise UserError(f"{source}: {where}: no group {name!r} in this model; groups are: {', '.join(names)}")
    groups = []
    for name, full, multiple_of in raw:
        if name in rules["freeze"]:
            groups.append(Group(name, full, (full,)))
            continue
        entry = rules["groups"].get(name, {})
        widths = entry.get("widths")
        if widths is not None and max(widths) > full:
            raise UserError(f"{source}: groups.{name}.widths: {max(widths)} is wider than the group ({full})")
        choices = allowed_widths(full, entry.get("fractions", rules["fractions"]), widths,
                                 entry.get("min_width", rules["min_width"]), entry.get("round_to", rules["round_to"]))
        groups.append(Group(name, full, tuple(c for c in choices if c % multiple_of == 0)))
    return groups
