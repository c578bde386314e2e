"""``ganprune nni space|trial|run``: the search as NNI search space, trial and local experiment."""
from __future__ import annotations

import os

from ganprune.cli import command, need, pick
from ganprune.core.errors import UserError
from ganprune.nni.experiment import TUNERS
from ganprune.nni.space import ENCODINGS
from ganprune.core.options import NNI, Option


@command("nni space", "write the NNI search space (one dimension per prunable G and D group) for a search config",
         NNI + (Option("encoding", "choice", choices=ENCODINGS, help="choice: keys G/<group>, values the widths "
                       "(any tuner, ours included); ordinal: keys G/<group>:index, a quniform position in the "
                       "ascending widths (ordered: better for TPE and Anneal) (default choice)"),))
def _nni_space(args):
    import json

    from ganprune.nni.space import export_search_space
    out = args.out       # a .json file, or a folder that receives search_space.json (default: print)
    if out and not out.endswith(".json"):
        out = os.path.join(out, "search_space.json")
    space = export_search_space(pick(args, NNI), out, encoding=args.encoding)
    if out:
        print(f"{len(space)} {args.encoding} dimensions ({sum(k.startswith('G/') for k in space)} G, "
              f"{sum(k.startswith('D/') for k in space)} D groups) -> {out}")
    else:
        print(json.dumps(space, indent=2))


@command("nni trial", "one NNI trial: score NNI's next candidate and report it (what `nni run` starts)", NNI)
def _nni_trial(args):
    from ganprune.nni.trial import run_trial
    r = run_trial(pick(args, NNI))
    print(f"score {r['score']:.5g} (NNI default {r['default']:.5g}), feasible {r['feasible']}, "
          f"G MACs {r['g_macs']:,}, D MACs {r['d_macs']:,}, {r['trial_seconds']:.1f} s")


@command("nni run", "run the search as a real local NNI experiment (our agents or an NNI tuner), collect history",
         NNI + (
             Option("tuner", "ours", choices=TUNERS, help="ours (the --g-agent/--d-agent pair as an NNI tuner) or an "
                    "NNI built-in tuner (default ours)"),
             Option("trials", None, "int", min=1, help="NNI trials (default: --rounds if given, else sized from the "
                    "search space: what ours needs to reach the budgets and refine; 2 per dimension, at least 20, "
                    "for NNI tuners)"),
             Option("concurrency", 1, "int", min=1, help="trials at once (NNI tuners; ours runs one at a time; "
                    "default 1)"),
             Option("port", 8080, "int", min=1, max=65535, help="NNI web UI / REST port (default 8080)"),
             Option("timeout", 3600.0, "float", min=0, help="seconds to wait for the trials (default 3600)"),
             Option("encoding", "auto", choices=("auto", *ENCODINGS), help="widths as the tuner sees them: choice (unordered "
                    "values), ordinal (an ordered position per group) or auto: ordinal for TPE and Anneal, which "
                    "model order, choice for the others (default auto)"),
             Option("keep_alive", False, "flag", help="after the last trial keep the experiment and its web UI "
                    "running until Ctrl-C (default: stop it)"),
         ))
def _nni_run(args):
    from ganprune.nni.experiment import closest_row, run_experiment
    need(args, "out", "dataroot")
    r = run_experiment(pick(args, NNI), args.out, tuner=args.tuner, trials=args.trials or args.rounds,
                       port=args.port, timeout=args.timeout, concurrency=args.concurrency, progress=True,
                       keep_alive=args.keep_alive, encoding=args.encoding)
    _print_history(r.history)
    t = r.timings
    print(f"experiment {r.experiment_id} {r.status}: startup {t['startup_s']:.1f} s, trials {t['wait_s']:.1f} s"
          + (f" (median trial {t['trial_wall_s']:.1f} s)" if "trial_wall_s" in t else ""))
    if r.best is None:
        raise UserError(_none_feasible(r.history, closest_row(r.history, r.setup.g_budget, r.setup.d_budget)))
    b = r.best
    print(f"best: trial {b['round']} score {b['score']:.4g} G MACs {int(b['g_macs']):,} "
          f"D MACs {int(b['d_macs']):,} -> {os.path.join(args.out, 'widths.yaml')}")


def _print_history(history):
    cols = ["round", "g_macs", "d_macs", "score_g", "score_d", "score", "feasible", "seconds", "error"]
    print(history[cols].to_markdown(index=False, floatfmt=".4g"))


def _none_feasible(history, closest) -> str:
    text = f"no trial met both budgets in {len(history)} trials"
    if closest is not None:
        text += (f"; the closest, trial {int(closest['round'])}, has G {int(closest['g_macs']):,} and D "
                 f"{int(closest['d_macs']):,} MACs")
    return text + "; raise --trials or loosen --g-budget/--d-budget"


@command("nni collect", "bring an NNI experiment (also one run with nnictl) back as history.csv and widths.yaml",
         NNI + (
             Option("experiment", kind="str", positional=True, help="the NNI experiment id (nnictl shows it)"),
             Option("experiment_dir", kind="path", help="NNI's experiment working directory holding the id's folder "
                    "(default ~/nni-experiments)"),
         ))
def _nni_collect(args):
    from ganprune.nni.collect import collect_experiment
    from ganprune.nni.experiment import closest_row
    need(args, "experiment", "out", "dataroot")
    history, best, setup = collect_experiment(pick(args, NNI), args.experiment, args.out, args.experiment_dir)
    _print_history(history)
    if best is None:
        raise UserError(_none_feasible(history, closest_row(history, setup.g_budget, setup.d_budget)))
    print(f"best: trial {best['round']} score {best['score']:.4g} G MACs {int(best['g_macs']):,} "
          f"-> {os.path.join(args.out, 'widths.yaml')}")
