"""The compression frontier: how far each method compresses G and what quality it keeps, side by side.

One teacher (the rank benchmark's: gray→color unet_64/ngf 32, 3,000 steps; 143 held-out val crops from photos
that training, search and selection never see), G at 4×, 10× and 20× fewer MACs (the narrowest widths of this
space give 31.5×, so 40× is out of its reach), the same seeds for every method. Methods, each one resumable
``run_pipeline`` run:

* ``greedy search (supernet)`` — supernet, collaborative greedy G/D agents, density fine-tune from the winner's
  slice (the default until this benchmark put the uniform slice ahead: docs/benchmarks.md);
* ``greedy from uniform (supernet)`` — the same, the greedy agents started from the uniform widths inside the
  budget (``start: uniform``) instead of shrinking from the teacher's;
* ``uniform slice (supernet; the default)`` — every G group at one fraction, filled to the budget, fine-tuned from
  its slice of the same supernet (the supernet without a search: the ``template`` agents, ganprune's default);
* ``uniform slice + pix2pix fine-tune`` — the same start, fine-tuned by the teacher's own pix2pix loss instead of
  the density recipe (the recipe benchmark has it ahead on KID after long fine-tunes; only with ``--methods``);
* ``uniform slice, GAN-trained supernet`` — the same, from a supernet of its own trained with the adversarial term
  (``supernet_lambda_gan`` 0.01, pix2pix's GAN:L1 ratio; only with ``--methods``);
* ``anchors' recipe (uniform + distillation)`` — what OMGD/DCD do: a uniform student (L1-kept channels, no
  supernet) trained by the strongest distillation recipe shipped (``--anchor-recipe``, default ``omgd`` when
  present, else ``dcd``);
* ``plain uniform + same fine-tune`` — uniform, L1-kept channels, no supernet, density fine-tune.

Equal compute: the methods without a supernet get its steps added to their fine-tune (``supernet_steps`` +
``finetune_steps``); the table reports each run's measured training seconds (search + prune + fine-tune stages)
so the equality can be checked. Quality: PSNR/SSIM to the teacher and PSNR to ground truth (per-image mean on
[0,1]); without ``--quick`` also KID to ground truth. Cost: the field's MACs convention (as GAN Compression
counts, ``GMACs``) and ONNX Runtime milliseconds at 1 thread, every exported G and the teacher timed warm and
interleaved in one process (``ORT ×`` = teacher ms / G ms, each the fastest of 30 calls: on shared cores a
median swings with preemption, most for the teacher's longer calls).

Teacher parity: a row is at parity when its PSNR to ground truth is within 2 standard errors (over the held-out
images) of the teacher's — the teacher's own per-image spread, fixed by the data, not by the method.

    python benchmarks/bench_frontier.py --quick     # 4× and 10×, 2 seeds, 100 + 300 steps, no KID
    python benchmarks/bench_frontier.py             # 4×, 10×, 20×, 3 seeds, 600 + 300 steps, KID
    python benchmarks/bench_frontier.py --ms --methods default,uniform_slice   # equal predicted ORT ms

``--ms``: each reduction is a G budget in milliseconds instead of MACs — the teacher's predicted ONNX Runtime time
at 1 thread divided by the ratio, from one latency table (``latency_G_ort1.yaml``) that every run budgets against,
so the searched G and the uniform slice are held to the same predicted time; ``ORT ×`` then says what the
exported files measure.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd
import torch
import yaml

from _common import run_sharing_supernet
from bench_rank import teacher_dir

# name: (run folder, agents, supernet, channel importance, recipe: None = the default density[, settings of its own
# supernet: trained for this method alone, not shared])
METHODS = {
    "greedy search (supernet)": ("default", "greedy", True, "l2", None),
    "greedy from uniform (supernet)": ("greedy_uniform", "greedy@uniform", True, "l2", None),
    "uniform slice (supernet; the default)": ("uniform_slice", "template", True, "l2", None),
    "uniform slice + pix2pix fine-tune": ("uniform_slice_pix2pix", "template", True, "l2", "pix2pix"),
    "uniform slice, GAN-trained supernet": ("uniform_slice_gan", "template", True, "l2", None,
                                            {"supernet_lambda_gan": 0.01}),
    "anchors' recipe (uniform + distillation)": ("anchors", "template", False, "l1", "ANCHOR"),
    "plain uniform + same fine-tune": ("plain_uniform", "template", False, "l1", None),
}

# run unless --methods names others; the two variants of the uniform slice (another recipe, a GAN-trained
# supernet) run only when named
DEFAULT_METHODS = ("default", "greedy_uniform", "uniform_slice", "anchors", "plain_uniform")


def settings(quick: bool) -> dict:
    if quick:
        return dict(ratios=(4, 10), seeds=2, finetune_steps=100, supernet_steps=300, fid=False, rounds=40)
    return dict(ratios=(4, 10, 20), seeds=3, finetune_steps=600, supernet_steps=300, fid=True, rounds=60)


def teacher_spaces(tdir: str, data: str):
    """(G space, D space) of the benchmark teacher, as the search builds them."""
    from ganprune.scoring.candidates import calibration_batches
    from ganprune.search.setup import build_spaces
    from ganprune.train.pair import load_pair
    G, D, g_spec, d_spec = load_pair(tdir)
    g_space, d_space, _ = build_spaces(G, D, calibration_batches(data, n_images=1, batch_size=1), g_spec, d_spec)
    return g_space, d_space


def uniform_widths_file(path: str, g_space, d_space, g_budget: float, d_budget: float) -> str:
    """A widths.yaml with uniform widths filled to both budgets: every uniform method gets exactly these."""
    from ganprune.core.io import atomic_write_yaml
    from ganprune.search.budget import uniform_widths
    def at(space, fraction):   # a fraction of the dense MACs (a bare number would be MACs)
        return uniform_widths(space, fraction * space.macs(space.full_widths()))
    atomic_write_yaml(path, {"generator": {"widths": at(g_space, g_budget)},
                             "discriminator": {"widths": at(d_space, d_budget)}})
    return path


def ms_budget_table(path: str, tdir: str, g_space):
    """The G latency table every ``--ms`` run budgets against: ONNX Runtime, 1 thread, the teacher's input; built
    once and saved (``path``), so a rerun or ``--report-only`` reads the same budgets."""
    from ganprune.search.budget import latency_table
    from ganprune.train.teacher import load_teacher
    G, _, _ = load_teacher(tdir)
    return latency_table(G.eval(), g_space, torch.randn(1, 3, 64, 64), path, "onnxruntime", 1)


def anchor_recipe(name: str | None) -> str:
    from ganprune.train.recipe import RECIPES
    import ganprune.train  # noqa: F401  (registers the built-in recipes)
    if name:
        RECIPES.lookup(name)
        return name
    return "omgd" if "omgd" in RECIPES else "dcd"


def _stage_seconds(out: str) -> float:
    total = 0.0
    for stage in ("search", "prune", "finetune"):
        path = os.path.join(out, ".done", stage)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                total += float(yaml.safe_load(fh).get("seconds", 0.0))
    return total


def teacher_spread(tdir: str, data: str, kid: bool) -> tuple[float, float | None]:
    """The teacher's own spread over the held-out split, fixed by the data and the same for every method, from
    one pass of the teacher: the standard error of its per-image PSNR to ground truth (the PSNR parity band's
    half-width is twice this) and, with ``kid``, the std of its KID to ground truth over 50 random halves of the
    images (the KID parity band's half-width is twice that std; its centre is the teacher's KID in the table)."""
    from _common import fid_features, outputs
    from ganprune.data.datasets import build_dataset
    from ganprune.metrics.quality import fid_kid, psnr
    from ganprune.pipeline import eval_phase
    from ganprune.train.teacher import load_teacher
    G, _, _ = load_teacher(tdir)
    _, B, fake = outputs(G, build_dataset(data, "aligned", eval_phase(data), flip=False))
    values = psnr(fake, B).double()
    se = float(values.std() / np.sqrt(len(values)))
    if not kid:
        return se, None
    real, fake = fid_features(B), fid_features(fake.clamp(-1, 1))
    return se, fid_kid(real, fake, fid=False, kid_subsets=50, kid_subset_size=len(real) // 2)["kid_std"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="runs/bench_frontier")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--first-seed", type=int, default=0, help="seeds run from this one on (to add seeds later)")
    ap.add_argument("--ratios", default=None, help="G MACs reductions, comma-separated (default 4,10,20; --quick 4,10)")
    ap.add_argument("--threads", type=int, default=2, help="training threads (latency is always timed at 1)")
    ap.add_argument("--anchor-recipe", default=None, help="recipe of the anchors' row (default omgd, else dcd)")
    ap.add_argument("--teacher-steps", type=int, default=3000, help="the benchmark teacher's training steps")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: the table from the runs already finished in --out (rows of missing runs left out)")
    ap.add_argument("--methods", help="run folders of the methods to run, comma-separated (default: all but "
                    "uniform_slice_pix2pix and uniform_slice_gan)")
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default 600; --quick 100)")
    ap.add_argument("--ms", action="store_true",
                    help="budgets in predicted ORT milliseconds at 1 thread (the teacher's / the ratio), not MACs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    s = settings(args.quick)
    if args.steps is not None:
        s["finetune_steps"] = args.steps
    seeds = args.seeds or s["seeds"]
    ratios = [float(r) for r in args.ratios.split(",")] if args.ratios else list(s["ratios"])
    anchor = anchor_recipe(args.anchor_recipe)
    data, tdir = teacher_dir(os.environ.get("GANPRUNE_RANK_CACHE", os.path.join(args.out, "rank")), args.teacher_steps)

    rows = []
    g_space, d_space = teacher_spaces(tdir, data)
    os.makedirs(args.out, exist_ok=True)
    ms_path = os.path.join(args.out, "latency_G_ort1.yaml")
    ms_table = ms_budget_table(ms_path, tdir, g_space) if args.ms else None
    for ratio in ratios:
        budget = f"{ms_table.predict(g_space.full_widths()) / ratio:.4f}ms" if args.ms else 1.0 / ratio
        for seed in range(args.first_seed, args.first_seed + seeds):
            shared = None
            for method, (folder, agent, supernet, importance, recipe, *own) in METHODS.items():
                if folder not in (args.methods.split(",") if args.methods else DEFAULT_METHODS):
                    continue
                out = os.path.join(args.out, f"x{ratio:g}", folder, f"seed{seed}")
                if args.report_only and not os.path.exists(os.path.join(out, "metrics.csv")):
                    continue
                steps = s["finetune_steps"] + (0 if supernet else s["supernet_steps"])   # equal training steps
                agent, _, start = agent.partition("@")   # greedy@uniform: greedy started from uniform widths
                config = {"teacher": tdir, "dataroot": data, "g_budget": budget, "d_budget": 0.5, "g_agent": agent,
                          "d_agent": agent, "importance": importance, "fill": True,
                          "recipe": anchor if recipe == "ANCHOR" else recipe or "density", "latency": False,
                          "fid": s["fid"], "seed": seed, "finetune_steps": steps,
                          "rounds": s["rounds"] if agent != "template" else 1,
                          "supernet_steps": s["supernet_steps"] if supernet else 0}
                if start:
                    config["g_agent_options"] = config["d_agent_options"] = {"start": start}
                if args.ms:   # every run budgets against the one table, timed at the thread count that ships
                    config.update(latency_table=ms_path, latency_threads=1, latency_backend="onnxruntime")
                elif agent == "template":   # uniform: the same widths for every uniform method, at the budget
                    config["widths"] = uniform_widths_file(os.path.join(args.out, f"uniform_x{ratio:g}.yaml"),
                                                           g_space, d_space, budget, 0.5)
                if own:   # a supernet of its own, trained with these settings
                    config.update(own[0])
                    result, _, wall = run_sharing_supernet(config, out, None, supernet)
                else:     # one supernet per (budget, seed)
                    result, shared, wall = run_sharing_supernet(config, out, shared, supernet)
                table = result["table"].set_index("model")
                final, dense = table.loc["pruned + fine-tuned"], table.loc["teacher"]
                rows.append({"reduction": f"{ratio:g}×" + (" ms" if args.ms else ""), "method": method, "seed": seed,
                             "G MACs ×": dense["GMACs"] / final["GMACs"],
                             "PSNR vs teacher": final["PSNR vs teacher"],
                             "SSIM vs teacher": final.get("SSIM vs teacher", float("nan")),
                             "PSNR": final["PSNR"], "KID": final.get("KID", float("nan")),
                             "teacher PSNR": dense["PSNR"], "teacher KID": dense.get("KID", float("nan")),
                             "train s": _stage_seconds(out), "steps": steps + (s["supernet_steps"] if supernet else 0),
                             "wall s": wall, "out": out})
                print(f"  {ratio:g}x {method:42s} seed {seed}: PSNR {final['PSNR']:.2f}  vs teacher "
                      f"{final['PSNR vs teacher']:.2f}", flush=True)
    raw = pd.DataFrame(rows)
    raw["ORT ×"] = _ort_speedups(raw, tdir)
    raw.to_csv(os.path.join(args.out, "bench_frontier_runs.csv"), index=False)
    _print(raw, s, seeds, anchor, tdir, *teacher_spread(tdir, data, s["fid"]))


def _ort_speedups(raw: pd.DataFrame, tdir: str) -> list[float]:
    """Teacher ms / G ms on ONNX Runtime at 1 thread (fastest of 30 warm calls), every file timed interleaved in one
    process."""
    from ganprune.deploy.export import export_onnx
    from ganprune.metrics.latency import measure_latency
    from ganprune.train.teacher import load_teacher
    G, _, _ = load_teacher(tdir)
    teacher_onnx = os.path.join(os.path.dirname(raw["out"].iloc[0]), "..", "..", "teacher_G.onnx")
    teacher_onnx = os.path.normpath(teacher_onnx)
    if not os.path.exists(teacher_onnx):
        export_onnx(G.eval(), teacher_onnx, torch.randn(1, 3, 64, 64))
    files = {"teacher": teacher_onnx, **{row.out: os.path.join(row.out, "G.onnx") for row in raw.itertuples()}}
    # warm: each timed call follows an untimed one of the same file, as a deployed G is called again and again
    # (cold, 40 small files in turn evict each other's weights and the small ones look slower than they run)
    # fastest of the calls: on shared cores a median of the teacher's (longer) calls swings 2× with preemption
    timed = measure_latency(files, (1, 3, 64, 64), threads=1, repeats=30, backends=("onnxruntime",), progress=False,
                            warm=True)
    ms = dict(zip(timed["model"], timed["min_ms"]))
    return [ms["teacher"] / ms[out] for out in raw["out"]]


def _print(raw: pd.DataFrame, s: dict, seeds: int, anchor: str, tdir: str, se: float, kid_std=None) -> None:
    metrics = [c for c in ("G MACs ×", "ORT ×", "PSNR vs teacher", "SSIM vs teacher", "PSNR", "KID", "train s")
               if raw[c].notna().any()]
    grouped = raw.groupby(["reduction", "method"], sort=False)
    mean, std = grouped[metrics].mean(), grouped[metrics].std()
    summary = mean.copy().astype(object)
    for col in metrics:
        summary[col] = [f"{m:.3g} ± {sd:.2g}" for m, sd in zip(mean[col], std[col])]
    teacher = raw.iloc[0]
    gap = mean["PSNR"] - float(teacher["teacher PSNR"])
    summary["at parity"] = ["yes" if g >= -2 * se else "no" for g in gap]
    if kid_std is not None:   # KID to ground truth within the teacher's own spread over halves of the images
        summary["KID parity"] = ["yes" if k <= float(teacher["teacher KID"]) + 2 * kid_std else "no"
                                 for k in mean["KID"]]
    print(f"\nteacher {tdir}: PSNR {teacher['teacher PSNR']:.2f} dB to ground truth on the 143 val crops; {seeds} "
          f"seeds; fine-tune {s['finetune_steps']} steps (+{s['supernet_steps']} for the methods without the "
          f"{s['supernet_steps']}-step supernet); anchors' recipe: {anchor}; MACs: the field's convention; "
          f"ORT × at 1 thread, batch 1\n")
    print(summary.reset_index().to_markdown(index=False))
    print(f"\nparity: mean PSNR to ground truth within 2 × {se:.3f} dB (2 standard errors of the teacher's "
          f"per-image PSNR) of the teacher's {float(teacher['teacher PSNR']):.2f} dB")
    if kid_std is not None:
        print(f"KID parity: mean KID to ground truth at most the teacher's {float(teacher['teacher KID']):.4f} + 2 × "
              f"{kid_std:.4f} (the std of the teacher's KID over 50 random halves of the held-out images)")
    for column in [c for c in ("at parity", "KID parity") if c in summary]:
        best = {}
        for (reduction, method), ok in zip(summary.index, summary[column]):
            if ok == "yes":
                best[method] = max(best.get(method, 0.0), float(reduction.split("×")[0]))
        print(f"largest reduction {'at PSNR parity' if column == 'at parity' else 'at KID parity'}:")
        for method in dict.fromkeys(m for _, m in summary.index):
            print(f"  {method}: {best[method]:g}×" if method in best else f"  {method}: none of the reductions measured")


if __name__ == "__main__":
    main()
