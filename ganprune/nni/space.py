"""The search as NNI sees it: one dimension per prunable group, and the options shared by every NNI step.

NNI needs a flat search space, so each prunable group becomes one key. Two encodings:

* ``choice``: key ``G/<group>`` (or ``D/<group>``), an NNI ``choice`` of the group's allowed widths. NNI's
  tuners treat a choice as unordered categories: to TPE, 16 channels is no closer to 24 than to 64.
* ``ordinal``: key ``G/<group>:index``, an NNI ``quniform`` over [-0.49, n - 0.51] with q = 1: the position
  (0 … n-1) in the group's ascending widths, ordered, each position (nearly) equally likely a priori; the
  range stays just inside ±0.5 because NNI rounds before it clips, so every value is whole. Tuners that
  model numbers (TPE, Anneal) can then learn "narrower is worse here". NNI 3.0's HPO search space has no
  ordinal type (its ``randint`` is categorical to TPE), hence the index.

A trial reads either encoding (the key says which). Groups with a single allowed width (frozen) are left
out: they are not search dimensions, and a trial puts every missing group at its full width.

The NNI commands take exactly the options of ``ganprune search`` (minus ``on_agent_error`` and
``agent_timeout``: an NNI tuner that fails stops the experiment) plus ``infeasible_penalty``, so one YAML
file drives the plain search, the space export, every trial and the tuner.
"""
from __future__ import annotations

import json
import math
import os
from typing import Mapping

from ganprune.core.errors import UserError
from ganprune.core.options import NNI, read_config, resolve

SEPARATOR = "/"
INDEX = ":index"   # key suffix of an ordinal dimension (a position); not "#": NNI reads "#" and "//" as comments
ENCODINGS = ("choice", "ordinal")
# History columns a trial does not report (the experiment fills them in: round, widths, feasibility,
# timing, error); every other history column is a metric the trial's final result must carry.
NOT_METRICS = ("round", "phase", "g_ms", "d_ms", "g_widths", "d_widths", "g_feasible", "d_feasible", "feasible",
               "seconds", "error")
PATH_OPTIONS = tuple(o.name for o in NNI if o.kind == "path")


def metric_columns() -> list[str]:
    """The history columns an NNI trial reports (what ``search._feedback`` reads back)."""
    from ganprune.search.loop import HISTORY_COLUMNS
    return [c for c in HISTORY_COLUMNS if c not in NOT_METRICS]


def options(values: Mapping | None = None, **overrides) -> dict:
    """Every ``ganprune nni`` option (``ganprune.core.options.NNI``): ``values`` and keyword ``overrides`` over
    the defaults, each checked."""
    return resolve(NNI, {**(values or {}), **overrides})


def load_options(config) -> dict:
    """The options of ``ganprune nni trial --config CONFIG`` (defaults filled in, unknown keys refused)."""
    return resolve(NNI, read_config(config), source=os.fspath(config))


def resolved_options(values: Mapping) -> dict:
    """The NNI options of ``values`` as plain data with absolute paths, for a config that trials and the
    tuner read from another working directory."""
    o = options(values)
    o.pop("out", None)
    return {k.replace("_", "-"): (os.path.abspath(v) if k in PATH_OPTIONS and v else v) for k, v in o.items()}


class Setup:
    """A search set up from ``ganprune nni`` options by ``ganprune.search.setup.prepare`` (the one way every
    search is built; its result is ``search``): ``options``, the pair's specs, both search spaces, the MACs
    budgets as numbers (D's ``inf`` when G is searched alone) and, when asked for, the candidate
    ``evaluator`` (trials) and the agents ``g_agent``/``d_agent`` (the tuner; ``d_agent`` None for G alone).

    ``Setup(load_options("search.yaml"))`` or ``Setup(dataroot=..., teacher=..., g_budget=0.3)``."""

    def __init__(self, values: Mapping | None = None, calib_images: int | None = None, *, evaluator: bool = False,
                 agents: bool = False, **overrides):
        from ganprune.search.budget import is_latency
        from ganprune.search.setup import prepare_from_options
        from ganprune.train.pair import pair_from_options
        if calib_images is not None:      # fewer images where only the spaces are needed
            overrides["calib_images"] = calib_images
        o = self.options = options(values, **overrides)
        if not o["dataroot"]:
            raise UserError("missing --dataroot (give it on the command line or in --config)")
        for name in ("g_budget", "d_budget"):
            if is_latency(o[name]):
                raise UserError(f"{name} {o[name]!r}: NNI experiments budget MACs only; use a fraction, "
                                "a percentage or a MAC count (latency budgets work in `ganprune search` and `prune`)")
        s = self.search = prepare_from_options(o, *pair_from_options(o), evaluator=evaluator, agents=agents,
                                               progress=False)
        self.g_spec, self.d_spec, self.g_space, self.d_space = s.g_spec, s.d_spec, s.g_space, s.d_space
        self.evaluator = s.evaluator
        self.g_agent, self.d_agent = s.g_agent, s.d_agent
        self.g_budget = s.g_budget.limit
        # G-only (no D checkpoint): no D to fit, so every candidate's D "fits" (its MACs are 0)
        self.d_budget = s.d_budget.limit if s.d_budget is not None else math.inf


def search_space(g_space, d_space, encoding: str = "choice") -> dict:
    """NNI search-space dict. ``choice``: ``{"G/<group>": {"_type": "choice", "_value": [widths...]}, ...}``;
    ``ordinal``: ``{"G/<group>:index": {"_type": "quniform", "_value": [-0.49, n - 0.51, 1]}, ...}``."""
    if encoding not in ENCODINGS:
        raise UserError(f"encoding {encoding!r}: expected one of {', '.join(ENCODINGS)}")
    out = {}
    for role, space in (("G", g_space), ("D", d_space)):
        for g in space.groups if space is not None else ():   # d_space None: G-only
            if len(g.choices) < 2:
                continue
            if encoding == "choice":
                out[f"{role}{SEPARATOR}{g.name}"] = {"_type": "choice", "_value": [int(c) for c in g.choices]}
            else:
                out[f"{role}{SEPARATOR}{g.name}{INDEX}"] = {"_type": "quniform",
                                                           "_value": [-0.49, len(g.choices) - 0.51, 1]}
    return out


def _index_to_width(key: str, value, space, role: str) -> tuple[str, int]:
    """(group, width) of an ordinal parameter; one line when the group or the index is not valid."""
    name = key.partition(SEPARATOR)[2][:-len(INDEX)]
    if space is None:
        raise UserError("NNI parameters for D given, but this search prunes G only (no discriminator)")
    group = next((g for g in space.groups if g.name == name), None)
    if group is None:
        raise UserError(f"NNI parameter {key!r}: {role} has no prunable group {name!r} (export the search space "
                        "with `ganprune nni space`)")
    n = len(group.choices)
    whole = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and float(value).is_integer()
    if not (whole and 0 <= value < n):
        raise UserError(f"NNI parameter {key!r} = {value!r}: expected a whole index 0-{n - 1} into {role} "
                        f"{name}'s widths ({', '.join(map(str, group.choices))})")
    return name, int(group.choices[int(value)])


def to_params(g_widths: dict, d_widths: dict) -> dict:
    """Widths of both nets as one flat NNI parameter dict."""
    return {**{f"G{SEPARATOR}{k}": int(v) for k, v in g_widths.items()},
            **{f"D{SEPARATOR}{k}": int(v) for k, v in d_widths.items()}}


def from_params(params: dict, g_space, d_space) -> tuple[dict, dict]:
    """Validated full width dicts of both nets from an NNI parameter dict of widths (``G/<group>``) or
    ordinal positions (``G/<group>:index``); missing groups at full width."""
    widths = {"G": {}, "D": {}}
    spaces = {"G": g_space, "D": d_space}
    if params is not None and not isinstance(params, dict):
        raise UserError(f"NNI parameters: expected a mapping of 'G/<group>'/'D/<group>' to widths, got "
                        f"{type(params).__name__}")
    for key, value in (params or {}).items():
        role, _, name = str(key).partition(SEPARATOR)
        if role not in widths or not name:
            raise UserError(f"NNI parameter {key!r}: expected 'G/<group>' or 'D/<group>' (export the search "
                            "space with `ganprune nni space`)")
        if name.endswith(INDEX):      # ordinal encoding: a position in the group's widths
            name, value = _index_to_width(str(key), value, spaces[role], role)
        elif isinstance(value, float) and value.is_integer():
            value = int(value)
        if name in widths[role]:
            raise UserError(f"NNI parameters: {role} group {name!r} is given twice (as a width and as an index)")
        widths[role][name] = value
    try:
        g = g_space.validate(widths["G"])
    except UserError as exc:
        raise UserError(f"NNI parameters for G: {exc}") from None
    if d_space is None:
        if widths["D"]:
            raise UserError("NNI parameters for D given, but this search prunes G only (no discriminator)")
        return g, {}
    try:
        d = d_space.validate(widths["D"])
    except UserError as exc:
        raise UserError(f"NNI parameters for D: {exc}") from None
    return g, d


def export_search_space(values: Mapping | None = None, out=None, encoding: str = "choice", **overrides) -> dict:
    """Build the spaces from the NNI options (``values`` and keyword ``overrides``) and write the NNI search
    space JSON (``encoding``: choice or ordinal) to ``out`` (if given)."""
    setup = Setup(values, calib_images=1, **overrides)
    space = search_space(setup.g_space, setup.d_space, encoding)
    if out:
        from ganprune.core.io import atomic_write_text
        atomic_write_text(out, json.dumps(space, indent=2) + "\n")
    return space


__all__ = ["options", "load_options", "resolved_options", "Setup", "search_space", "to_params",
           "from_params", "export_search_space"]
