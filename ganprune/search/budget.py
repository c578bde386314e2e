"""What a pruned network must fit: a MACs budget, or a latency budget in milliseconds.

A budget is a limit on one cost of the widths. MACs are exact and free (``SearchSpace.macs``);
latency is predicted from a ``LatencyTable`` (each conv timed once at a grid of widths, then a fitted
whole-model map: microseconds per prediction, so agents can probe thousands of widths). Agents, the
search loop and the budget fill all ask the same object, so a latency budget needs nothing new from
an agent.

Widths that fit a budget (``fill_budget``: grow into it; ``shrink_into_budget``: shrink into it;
``uniform_widths``: uniform pruning at that cost) live here too: the search, the NNI trials and the
benchmarks share them.

Spellings: ``0.25`` or ``"25%"`` (of the dense MACs), ``3e8`` (absolute MACs), ``"12ms"`` (predicted
milliseconds per image at batch 1 on the table's backend and thread count: by default the exported ONNX file
in ONNX Runtime, the file the pipeline ships).

Latency is measured, so two tables built on one machine differ by a few percent: for repeatable
widths, build the table once and pass it again (``--latency-table``; the pipeline keeps it in its
output folder). Given the same table, seed and config, the search is deterministic.
"""
from __future__ import annotations

import os
from typing import Callable, Mapping

from ganprune.core.errors import UserError


class Budget:
    """``cost(widths) <= limit`` for one network; ``unit`` is ``"MACs"`` or ``"ms"``."""

    def __init__(self, space, limit: float, unit: str = "MACs", table=None):
        if unit not in ("MACs", "ms"):
            raise UserError(f"budget unit {unit!r}: expected 'MACs' or 'ms'")
        if unit == "ms" and table is None:
            raise UserError("a latency budget needs a latency table (LatencyTable)")
        try:
            self.limit = float(limit)
        except (TypeError, ValueError):
            raise UserError(f"budget {limit!r}: expected a positive number of {unit}") from None
        if not self.limit > 0:
            raise UserError(f"budget {limit!r}: expected a positive number of {unit}")
        self.space, self.unit, self.table = space, unit, table
        self._cost: Callable[[dict], float] = table.predict if unit == "ms" else space.macs

    def cost(self, widths: Mapping[str, int]) -> float:
        return float(self._cost(dict(widths)))

    def fits(self, widths: Mapping[str, int]) -> bool:
        return self.cost(widths) <= self.limit

    @property
    def full(self) -> float:
        """The dense network's cost."""
        return self.cost(self.space.full_widths())

    def describe(self) -> str:
        if self.unit == "ms":
            return f"{self.limit:.4g} ms ({100 * self.limit / self.full:.1f}% of the dense {self.full:.4g} ms)"
        return f"{self.limit:.4g} MACs ({100 * self.limit / self.full:.1f}% of dense)"

    def __repr__(self) -> str:
        return f"Budget({self.describe()})"


def is_latency(spec) -> bool:
    return isinstance(spec, str) and spec.strip().lower().endswith("ms")


def parse_budget(spec, space, table=None) -> Budget:
    """A ``Budget`` from its spelling (see the module docstring); a ``Budget`` passes through.

    ``table`` (a ``LatencyTable`` or a zero-argument callable returning one) is used only for ``"…ms"``."""
    if isinstance(spec, Budget):
        return spec
    if is_latency(spec):
        text = spec.strip()[:-2].strip()
        try:
            limit = float(text)
        except ValueError:
            raise UserError(f"budget {spec!r}: expected milliseconds like '12ms'") from None
        if table is None:
            raise UserError(f"budget {spec!r}: a latency budget needs a latency table")
        return Budget(space, limit, "ms", table() if callable(table) else table)
    return Budget(space, resolve_macs(spec, space.macs(space.full_widths())), "MACs")


def resolve_macs(budget, full_macs: float) -> float:
    """A MACs budget: a fraction of the full model (0 < b <= 1, or "25%") or an absolute MAC count (> 1)."""
    value = budget
    if isinstance(budget, str):
        text = budget.strip()
        try:
            value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise UserError(f"budget {budget!r}: expected a fraction like 0.25, a percentage like '25%', "
                            "an absolute MAC count, or milliseconds like '12ms'") from None
    if value is None or value <= 0:
        raise UserError(f"budget {budget!r} must be positive")
    return float(value) * full_macs if value <= 1 else float(value)


def latency_table(model, space, example_input, path=None, backend: str = "onnxruntime", threads: int = 2,
                  progress: bool = True):
    """The ``LatencyTable`` saved at ``path`` (refused, in one line naming the key, if it was built for
    another backend, thread count, input shape or set of groups); when there is none yet, one built for
    ``model`` and saved there atomically, so reruns budget against the same numbers."""
    from ganprune.metrics.latency import LatencyTable
    want = {"backend": backend, "threads": int(threads), "input_shape": [1, *example_input.shape[1:]],
            "full": space.full_widths()}
    if path and os.path.exists(path):
        table = LatencyTable.load(path)
        have = {k: table.data.get(k) for k in want}
        if have == want:
            return table
        raise UserError(f"{path}: latency table built for {_mismatch(have, want)}; delete it or give another "
                        "--latency-table")
    table = LatencyTable.build(model, space, example_input[:1], threads=threads, backend=backend, progress=progress)
    if path:
        table.save(path)
    return table


def _mismatch(have: dict, want: dict) -> str:
    key = next(k for k in want if have.get(k) != want[k])
    return f"{key}={have.get(key)!r}, this run needs {key}={want[key]!r}"


# --------------------------------------------------------------------------- widths that fit a budget

def fill_budget(space, widths: dict[str, int], budget) -> dict[str, int]:
    """``widths`` grown into ``budget`` (a ``Budget`` or MACs): one choice at a time, always the group
    furthest below its full width (relative; ties: the earlier group), while it fits. Deterministic."""
    budget = as_budget(budget, space)
    widths = dict(widths)
    full = space.full_widths()
    while True:
        grown = []
        for g in space.groups:
            i = g.choices.index(widths[g.name])
            if i + 1 < len(g.choices):
                trial = {**widths, g.name: g.choices[i + 1]}
                if budget.fits(trial):
                    grown.append((widths[g.name] / full[g.name], len(grown), trial))
        if not grown:
            return widths
        widths = min(grown)[2]


def widest_uniform(space, budget) -> dict[str, int]:
    """The widest uniformly scaled widths (``space.uniform``) within ``budget``, by bisection on the fraction;
    the smallest widths when even a tiny fraction is over budget."""
    budget = as_budget(budget, space)
    full = space.validate(space.uniform(1.0))
    if budget.fits(full):
        return dict(full)
    lo, hi, best = 0.0, 1.0, {g.name: int(g.choices[0]) for g in space.groups}
    for _ in range(30):
        mid = (lo + hi) / 2
        widths = {k: int(v) for k, v in space.uniform(mid).items()}
        if budget.fits(widths):
            lo, best = mid, widths
        else:
            hi = mid
    return best


def uniform_widths(space, budget) -> dict[str, int]:
    """Uniform pruning at equal cost: ``widest_uniform``, then grown into the budget it leaves
    (``fill_budget``). Deterministic."""
    best = widest_uniform(space, budget)
    return fill_budget(space, best, budget) if as_budget(budget, space).fits(best) else best


def shrink_into_budget(space, widths: dict[str, int], budget) -> dict[str, int]:
    """``widths`` shrunk until they fit ``budget`` (a ``Budget`` or MACs): one choice at a time, always the
    group widest relative to its full width (ties: the earlier group). Deterministic; the widths come
    back unchanged when they fit already. How an NNI tuner's over-budget proposal is repaired."""
    budget = as_budget(budget, space)
    widths = dict(widths)
    full = space.full_widths()
    while not budget.fits(widths):
        shrinkable = [(-widths[g.name] / full[g.name], i, g) for i, g in enumerate(space.groups)
                      if g.choices.index(widths[g.name]) > 0]
        if not shrinkable:
            return widths
        g = min(shrinkable, key=lambda t: t[:2])[2]
        widths[g.name] = g.choices[g.choices.index(widths[g.name]) - 1]
    return widths


def as_budget(budget, space) -> Budget:
    """A ``Budget`` as is; a number as a MACs limit on ``space``."""
    return budget if isinstance(budget, Budget) else Budget(space, budget, "MACs")
