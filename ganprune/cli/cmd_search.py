"""The pruning commands: ``search`` (widths only), ``finetune`` (a pruned pair), ``prune`` (everything)."""
from __future__ import annotations

import os

from ganprune.cli import command, need, pick
from ganprune.core.errors import UserError
from ganprune.core.options import FINETUNE, FINETUNE_RUN, PIPELINE, SEARCH, STAGES, Option, search_keywords


@command("search", "collaborative G/D width search scored by the local-density objective (no fine-tuning)", SEARCH)
def _search(args):
    from ganprune.core.io import atomic_write_text
    from ganprune.train.pair import pair_from_options
    from ganprune.search.family import is_family, run_family_search
    from ganprune.search.setup import run_search
    need(args, "dataroot")
    o = pick(args, SEARCH)
    if is_family(o["g_budget"], args.out):   # one supernet, one search per budget: OUT/g<budget>/
        table, _ = run_family_search(o, args.out)
        print(table.to_markdown(index=False, floatfmt=".4g"))
        print(f"family: {os.path.join(args.out, 'family.md')}")
        return
    G, D, g_spec, d_spec = pair_from_options(o)
    result = run_search(G, D, g_spec, d_spec, args.dataroot, args.out, **search_keywords(o))
    front = result.pareto()
    cols = ["round", "g_macs", "d_macs", "density", "balance", "score_g", "score", "feasible"]
    print(front[cols].to_markdown(index=False, floatfmt=".4g"))
    if args.out:
        atomic_write_text(os.path.join(args.out, "pareto.csv"), front.to_csv(index=False))
    if result.best is None:
        raise UserError(f"no candidate pair met both budgets in {len(result.history)} rounds; "
                        "raise --rounds or loosen --g-budget/--d-budget")
    best = result.best
    found = {"finalist": ", a finalist after distillation", "uniform": ", uniform pruning",
             "fill": ", grown into the budget"}.get(best.get("phase"), "")
    print(f"best: round {best['round']}{found} score {best['score']:.4g} G MACs {best['g_macs']:,} "
          f"D MACs {best['d_macs']:,}" + (f" -> {os.path.join(args.out, 'widths.yaml')}" if args.out else ""))


@command("finetune", "fine-tune a pruned G/D pair with a recipe (density, pix2pix, cyclegan, dgl, dcd, gcc, omgd, "
                     "selfsup, output_l1)", FINETUNE)
def _finetune(args):
    from ganprune.train.pair import pair_from_options
    from ganprune.pipeline import finetune_pruned
    need(args, "pruned_g", "dataroot", "out")
    TG, TD, _, d_spec = pair_from_options(pick(args, FINETUNE))
    r = finetune_pruned(args.pruned_g, args.pruned_d, TG, TD, d_spec, **pick(args, FINETUNE_RUN))
    if os.environ.get("RANK", "0") != "0":   # under torchrun every rank returns the summary; one prints it
        return
    rate = f"{r['steps_per_s']:.2f} steps/s" if r["steps_per_s"] else "nothing to do"
    val_text = ", ".join(f"{k} {r[k]:.4f}" for k in ("val_L1", "val_L1_student_to_teacher") if r[k] is not None)
    print(f"finetune {r['recipe']}: step {r['steps']} ({r['steps_run']} run, {rate}, {r['device']} "
          f"{r['precision']}, {r['world_size']} process(es)){'; ' + val_text if val_text else ''}")
    for name, path in r["paths"].items():
        print(f"  {name}: {path}")


@command("prune", "the whole pipeline: search -> prune -> fine-tune -> evaluate -> export -> report (resumable)",
         PIPELINE + (Option("stage", choices=STAGES, help="run only this stage (its inputs must exist), finished "
                                                          "or not"),))
def _prune(args):
    from ganprune.pipeline import run_pipeline
    need(args, "dataroot", "out")
    r = run_pipeline(pick(args, PIPELINE), args.out, stages=[args.stage] if args.stage else None)
    if r["table"] is not None:
        print(r["table"].to_markdown(index=False, floatfmt=".4g"))
    print(", ".join(f"{name} {state}" for name, state in r["stages"].items()) + f" in {r['seconds']:.1f} s")
    for name, path in r["paths"].items():
        print(f"  {name:12s} {path}")


@command("apply", "prune to the widths of a widths.yaml (from `search` or `nni run`): writes pruned_G.pt and "
         "pruned_D.pt into --out (then `ganprune prune` with the same --out and --widths goes on from there)",
         PIPELINE)
def _apply(args):
    from ganprune.pipeline import run_pipeline
    need(args, "dataroot", "out", "widths")
    r = run_pipeline(pick(args, PIPELINE), args.out, stages=["search", "prune"])
    print(", ".join(f"{name} {state}" for name, state in r["stages"].items()) + f" in {r['seconds']:.1f} s")
    for name in ("pruned_G.pt", "pruned_D.pt", "widths.yaml"):
        print(f"  {os.path.join(args.out, name)}")
