"""The search as NNI sees it: one ``choice`` per prunable group, and the options shared by every NNI step.

NNI needs a flat search space, so each prunable group becomes a key ``G/<group>`` or ``D/<group>`` whose
values are the group's allowed widths. Groups with a single allowed width (frozen) are left out: they
are not search dimensions, and a trial puts every missing group at its full width.

The NNI commands take exactly the options of ``ganprune search`` (minus ``on_agent_error`` and ``agent_timeout``: an NNI
tuner that fails stops the experiment) plus ``infeasible_penalty``, so one YAML file drives the plain
search, the space export, every trial and the tuner.
"""
from __future__ import annotations

import argparse
import json
import os

from ganprune.errors import UserError

SEPARATOR = "/"
NOT_FOR_NNI = ("on_agent_error", "agent_timeout")   # search options the NNI commands do not take
PATH_OPTIONS = ("teacher", "generator", "discriminator", "dataroot", "agent_file", "g_space", "d_space")


def add_nni_options(p) -> None:
    """Give parser ``p`` the options of ``ganprune search`` (same names, defaults and checks) and the
    penalty used to score over-budget candidates. Every NNI command takes them all, so one YAML serves
    them all; each reads what it needs (``nni trial`` ignores the agent options, which are the tuner's)."""
    from ganprune.cli import COMMANDS
    template = argparse.ArgumentParser(add_help=False)
    COMMANDS["search"][1](template)
    for action in template._actions:
        if action.dest not in NOT_FOR_NNI:
            p._add_action(action)
    p.add_argument("--infeasible-penalty", type=float, default=1.0,
                   help="added to the objective (NNI 'default') of an over-budget candidate, scaled by "
                        "1 + its relative excess over each budget (default 1.0)")


def load_options(config) -> argparse.Namespace:
    """The options of ``ganprune nni trial --config CONFIG`` (defaults filled in, unknown keys refused)."""
    from ganprune.cli import _apply_config, build_parser
    parser, leaves = build_parser()
    _apply_config(leaves["nni trial"], os.fspath(config))
    return parser.parse_args(["nni", "trial"])


def resolved_options(args) -> dict:
    """The NNI options of ``args`` as plain data with absolute paths, for a config that trials and the
    tuner read from another working directory."""
    template = argparse.ArgumentParser(add_help=False)
    add_nni_options(template)
    out = {}
    for action in template._actions:
        value = getattr(args, action.dest, action.default)
        if action.dest in PATH_OPTIONS and value:
            value = os.path.abspath(os.fspath(value))
        out[action.dest.replace("_", "-")] = value
    out.pop("out", None)
    return out


class Setup:
    """What every NNI step rebuilds from the options: teacher pair, calibration batches, both search
    spaces and MACs budgets. ``evaluator()`` adds the (costlier) candidate evaluator."""

    def __init__(self, args, calib_images: int | None = None):
        import torch

        from ganprune.cli import pair_from_args
        from ganprune.scoring import calibration_batches
        from ganprune.pipeline import _first_conv_in_channels
        from ganprune.budget import is_latency, resolve_macs
        from ganprune.space import SearchSpace
        if not getattr(args, "dataroot", None):
            raise UserError("missing --dataroot (give it on the command line or in --config)")
        self.args = args
        self.G, self.D, self.g_spec, self.d_spec = pair_from_args(args)
        torch.manual_seed(args.seed)
        self.batches = calibration_batches(args.dataroot, phase=args.phase,
                                           n_images=calib_images or args.calib_images,
                                           batch_size=args.calib_batch, mode=args.mode, direction=args.direction,
                                           size=args.size)
        if not self.batches:
            raise UserError(f"{args.dataroot}: no {args.phase} images for calibration")
        x, y = self.batches[0]["A"][:1], self.batches[0]["B"][:1]
        conditional = _first_conv_in_channels(self.D) == x.shape[1] + y.shape[1]
        d_x = torch.cat([x, y], 1) if conditional else y
        g_arch, d_arch = self.g_spec.get("arch"), self.d_spec.get("arch")
        self.g_space = SearchSpace.from_model(self.G, x, arch=g_arch if g_arch and ":" not in g_arch else None,
                                              config=args.g_space)
        self.d_space = SearchSpace.from_model(self.D, d_x, arch=d_arch if d_arch and ":" not in d_arch else None,
                                              config=args.d_space)
        for name in ("g_budget", "d_budget"):
            if is_latency(getattr(args, name)):
                raise UserError(f"{name} {getattr(args, name)!r}: NNI experiments budget MACs only; use a fraction, "
                                "a percentage or a MAC count (latency budgets work in `ganprune search` and `prune`)")
        self.g_budget = resolve_macs(args.g_budget, self.g_space.macs(self.g_space.full_widths()))
        self.d_budget = resolve_macs(args.d_budget, self.d_space.macs(self.d_space.full_widths()))

    def evaluator(self):
        from ganprune.pipeline import build_evaluator
        a = self.args
        return build_evaluator(self.G, self.D, self.batches, g_space=self.g_space, d_space=self.d_space,
                               g_spec=self.g_spec, d_spec=self.d_spec, embedding=a.embedding, m=a.m,
                               discrepancy=a.discrepancy, l1_weight=a.l1_weight, balance_weight=a.balance_weight,
                               importance=a.importance, seed=a.seed)


def search_space(g_space, d_space) -> dict:
    """NNI search-space dict: ``{"G/<group>": {"_type": "choice", "_value": [widths...]}, "D/...": ...}``."""
    out = {}
    for role, space in (("G", g_space), ("D", d_space)):
        for g in space.groups:
            if len(g.choices) > 1:
                out[f"{role}{SEPARATOR}{g.name}"] = {"_type": "choice", "_value": [int(c) for c in g.choices]}
    return out


def to_params(g_widths: dict, d_widths: dict) -> dict:
    """Widths of both nets as one flat NNI parameter dict."""
    return {**{f"G{SEPARATOR}{k}": int(v) for k, v in g_widths.items()},
            **{f"D{SEPARATOR}{k}": int(v) for k, v in d_widths.items()}}


def from_params(params: dict, g_space, d_space) -> tuple[dict, dict]:
    """Validated full width dicts of both nets from an NNI parameter dict (missing groups at full width)."""
    if params is not None and not isinstance(params, dict):
        raise UserError(f"NNI parameters: expected a mapping of 'G/<group>'/'D/<group>' to widths, got "
                        f"{type(params).__name__}")
    widths = {"G": {}, "D": {}}
    for key, value in (params or {}).items():
        role, _, name = str(key).partition(SEPARATOR)
        if role not in widths or not name:
            raise UserError(f"NNI parameter {key!r}: expected 'G/<group>' or 'D/<group>' (export the search "
                            "space with `ganprune nni space`)")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        widths[role][name] = value
    try:
        g = g_space.validate(widths["G"])
    except UserError as exc:
        raise UserError(f"NNI parameters for G: {exc}") from None
    try:
        d = d_space.validate(widths["D"])
    except UserError as exc:
        raise UserError(f"NNI parameters for D: {exc}") from None
    return g, d


def export_search_space(args, out=None) -> dict:
    """Build the spaces from the options and write the NNI search space JSON to ``out`` (if given)."""
    setup = Setup(args, calib_images=1)
    space = search_space(setup.g_space, setup.d_space)
    if out:
        from ganprune.io import atomic_write_text
        atomic_write_text(out, json.dumps(space, indent=2) + "\n")
    return space


__all__ = ["add_nni_options", "load_options", "resolved_options", "Setup", "search_space", "to_params",
           "from_params", "export_search_space"]
