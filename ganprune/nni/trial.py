"""One NNI trial: score the candidate NNI hands out and report it (``python -m ganprune nni trial``).

The trial rebuilds the teacher pair, calibration batches, spaces and evaluator from the same options as
``ganprune search`` (a YAML given with ``--config``), as it does (``ganprune.search.setup.prepare``), reads the widths with ``nni.get_next_parameter()``
and reports ``nni.report_final_result({"default": ..., "score": ..., ...})``.

An over-budget candidate is not an error: it is scored as usual, reported with ``feasible: False``, and
its ``default`` (what NNI's tuners minimise) is penalised::

    default = score + infeasible_penalty * (1 + max(0, g_macs/g_budget - 1) + max(0, d_macs/d_budget - 1))

so every infeasible candidate ranks below any feasible one with a score under ``infeasible_penalty``, and
the further over budget, the worse. Invalid widths (not in the search space) raise: the trial fails and
NNI records it as FAILED. No fine-tuning happens before scoring (candidates inherit teacher weights).
Outside an NNI experiment ``get_next_parameter()`` gives nothing, so the full widths are scored.
"""
from __future__ import annotations

import sys
import time
from typing import Mapping

from ganprune.core.errors import UserError


def penalised(score: float, g_macs: int, d_macs: int, g_budget: float, d_budget: float, penalty: float) -> float:
    """The value NNI minimises: the score, plus the documented penalty when a budget is exceeded."""
    if g_macs <= g_budget and d_macs <= d_budget:
        return float(score)
    excess = max(0.0, g_macs / g_budget - 1) + max(0.0, d_macs / d_budget - 1)
    return float(score) + penalty * (1 + excess)


def score_candidate(setup, evaluator, params: dict) -> dict:
    """The final-result dict of one candidate given as NNI parameters (shrunk into the budgets first when
    the ``repair`` option is on); it says which widths were scored (``g_widths``/``d_widths``, JSON)."""
    import json

    from ganprune.nni.space import from_params
    from ganprune.search.loop import candidate_rng
    from ganprune.search.budget import shrink_into_budget
    g_widths, d_widths = from_params(params, setup.g_space, setup.d_space)
    if setup.options.get("repair"):
        g_widths = shrink_into_budget(setup.g_space, g_widths, setup.g_budget)
        if setup.d_space is not None:
            d_widths = shrink_into_budget(setup.d_space, d_widths, setup.d_budget)
    with candidate_rng(setup.options["seed"], g_widths, d_widths, evaluator.device):   # as `ganprune search` scores it
        metrics = evaluator.score_pair(g_widths, d_widths)
    g_ok, d_ok = metrics["g_macs"] <= setup.g_budget, metrics["d_macs"] <= setup.d_budget
    result = {k: v for k, v in metrics.items() if k != "seconds"}   # every evaluator metric, as plain numbers
    result.update(g_feasible=bool(g_ok), d_feasible=bool(d_ok), feasible=bool(g_ok and d_ok),
                  eval_seconds=metrics["seconds"], g_widths=json.dumps(g_widths), d_widths=json.dumps(d_widths),
                  default=penalised(metrics["score"], metrics["g_macs"], metrics["d_macs"], setup.g_budget,
                                    setup.d_budget, setup.options["infeasible_penalty"]))
    return result


def next_parameters(nni) -> dict:
    """NNI's parameters for this trial ({} outside an experiment); one line if its parameter file is broken."""
    import json
    import os
    try:
        params = nni.get_next_parameter()
    except (AssertionError, KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        where = os.path.join(os.environ.get("NNI_SYS_DIR", "."), "parameter.cfg")
        raise UserError(f"{where}: NNI trial parameters must be a JSON object with a 'parameters' mapping of "
                        f"'G/<group>'/'D/<group>' to widths ({type(exc).__name__}{': ' + str(exc) if str(exc) else ''})"
                        ) from None
    if params is not None and not isinstance(params, dict):
        raise UserError(f"NNI trial parameters: expected a mapping of 'G/<group>'/'D/<group>' to widths, got "
                        f"{type(params).__name__}")
    return params or {}


def run_trial(values: Mapping | None = None, **overrides) -> dict:
    """Score NNI's next candidate (the full widths when run outside NNI) and report it to NNI; the options
    are ``ganprune nni``'s (``values`` such as ``load_options(path)``, and/or keywords)."""
    import nni

    from ganprune.nni.space import Setup
    start = time.perf_counter()
    params = next_parameters(nni)
    setup = Setup(values, evaluator=True, **overrides)
    result = score_candidate(setup, setup.evaluator, params)
    result["trial_seconds"] = time.perf_counter() - start
    nni.report_final_result(result)
    return result


if __name__ == "__main__":
    # ``python -m ganprune.nni.trial ARGS`` (older NNI configs) is ``python -m ganprune nni trial ARGS``.
    import runpy
    sys.argv = ["ganprune", "nni", "trial", *sys.argv[1:]]
    runpy.run_module("ganprune", run_name="__main__", alter_sys=True)
