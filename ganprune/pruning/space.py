"""The search space of a G or D: which channel widths can be chosen, and what each choice costs.

Groups come from torch-pruning's DependencyGraph (``ganprune.pruning.graph``): channels that must be pruned
together share one width, and channels that reach the model's output never form a group, so output
shapes never change.

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
from torch import nn
from torch_pruning.utils import op_counter

from ganprune.core.errors import UserError
from ganprune.core.plugins import builtin_package
from ganprune.pruning.graph import as_args, coupled_groups, dependency_graph, forward, shape_only_copy

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
            forward(model, as_args(example_inputs))
    finally:
        for h in handles:
            h.remove()
        for m in passthrough:
            del m.forward
    shapes = [list(p.shape) for p in model.parameters()]
    return consts, factors, shapes, batch[0]


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
        rules, source = builtin_package("search_spaces").load(arch, config)
        if torch.is_tensor(example_inputs) and example_inputs.dim() > 1 and len(example_inputs) > 1:
            example_inputs = example_inputs[:1]  # per-sample costs, as the counter reports them at batch 1
        try:
            measured = _probe(*shape_only_copy(model, example_inputs))
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
