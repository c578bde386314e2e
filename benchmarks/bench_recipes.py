"""Fine-tuning recipes side by side, fairly: same teacher, same pruned pair, same steps, every held-out image.

The teacher is the frontier/rank benchmarks' (gray→color unet_64/ngf 32, 3,000 steps; ``bench_rank.teacher_dir``,
cached under ``$GANPRUNE_RANK_CACHE``, else ``--out``/rank). G is pruned to uniform widths filled to 10% of its
MACs (the frontier's 10× point) and D to 50% (``search.budget.uniform_widths``), channels kept by L1 magnitude;
every recipe fine-tunes its own copy of that pair for the same steps (selfsup trains a copy of the dense D, as
the method prescribes), batch 1, once per seed (the seed sets the batch order and the recipe's own modules).
``output_l1`` (plain L1 to the teacher's output) is the control a distillation recipe has to beat.

BatchNorm, one rule for all: the trainer runs every student G in train mode (batch-1 statistics, dropout on),
so its running statistics are a momentum average the recipe's extra forwards also feed (cyclegan's identity
pass on B does; density's perturbed copies run in eval mode and do not) and the pruned start still has the
dense teacher's. So every scored student (the pruned start too) keeps the weights it trained and has its
BatchNorm statistics re-estimated on all train inputs (``recalibrate_batchnorm``: cumulative average, dropout
off) before it is scored in eval mode. The teacher is scored as trained.

Scores on every val image (never seen in training; the result is each run's last step, no picking on val):
PSNR (mean of per-image PSNR on [0, 1]) and SSIM against the ground truth and against the teacher's output,
FID and KID (× 1000; ± std over 50 subsets of half the images) against the val targets, from FID-Inception
features. ``train s`` is the measured wall-clock of the training steps (kept in the run's state, so cached
runs report it too) and ``steps/s`` = steps / ``train s``, on this machine's CPU at ``--threads``.

    python benchmarks/bench_recipes.py --quick --threads 1     # 300 steps, 3 seeds, all recipes
    python benchmarks/bench_recipes.py --threads 1             # 2,000 steps, 3 seeds (--seeds, --recipes to cut)

Runs are resumable and cached in ``--out`` (one folder per recipe, steps and seed, with its scores): a rerun
only trains and scores what is missing. Per-run rows go to ``bench_recipes_<steps>_runs.csv``, mean ± std over
seeds to ``bench_recipes_<steps>.csv``.
"""
from __future__ import annotations

import copy
import json
import os

# Before torch loads OpenMP: idle threads sleep instead of spinning. On a CPU shared with other jobs,
# spinning threads made training steps far slower (measured: docs/benchmarks.md, CPU threads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd
import torch

from _common import fid_features, outputs, parser
from bench_frontier import teacher_spaces
from bench_rank import teacher_dir
from ganprune.core.io import atomic_write_text
from ganprune.data.datasets import build_dataset
from ganprune.metrics.quality import fid_kid, psnr, ssim
from ganprune.pruning.physical import prune
from ganprune.scoring.candidates import recalibrate_batchnorm
from ganprune.search.budget import uniform_widths
from ganprune.train.pair import load_pair
from ganprune.train.trainer import finetune

RECIPES = ("pix2pix", "density", "dgl", "dcd", "gcc", "omgd", "selfsup", "cyclegan", "output_l1")
G_BUDGET, D_BUDGET = 0.10, 0.50     # fractions of the teacher's MACs
TEACHER_STEPS = 3000
METRICS = ("PSNR GT", "SSIM GT", "PSNR teacher", "SSIM teacher", "FID", "KID×1e3", "KID subset std×1e3",
           "train s", "steps/s")


def steps_for(quick: bool) -> int:
    return 300 if quick else 2000


def pruned_pair(TG, TD, g_space, d_space, train_set):
    """The uniform pair every recipe starts from (L1-kept channels) and its (G, D) MACs fractions."""
    def at(space, fraction):
        return uniform_widths(space, fraction * space.macs(space.full_widths()))
    g_w, d_w = at(g_space, G_BUDGET), at(d_space, D_BUDGET)
    item = train_set[0]
    x, xd = item["A"][None], torch.cat([item["A"], item["B"]])[None]
    G0, D0 = prune(TG, g_w, x, importance="l1"), prune(TD, d_w, xd, importance="l1")
    fracs = (g_space.macs(g_w) / g_space.macs(g_space.full_widths()),
             d_space.macs(d_w) / d_space.macs(d_space.full_widths()))
    return G0, D0, fracs


class ValScorer:
    """Scores generators on every val image against the ground truth, the teacher's output and (FID/KID) the
    val targets; students get their BatchNorm statistics re-estimated on the train inputs first (the rule in
    the module docstring). The teacher's outputs and the real features are computed once."""

    def __init__(self, TG, val_set, train_set, use_fid=True, batch_size=16):
        self.val_set = val_set
        self.A, self.B, self.teacher_out = outputs(TG, val_set)
        train_A = torch.stack([train_set[i]["A"] for i in range(len(train_set))])
        self.calib = list(train_A.split(batch_size))
        self.real_feats = fid_features(self.B) if use_fid else None

    def __call__(self, G, student=True) -> dict:
        if student:
            recalibrate_batchnorm(G, self.calib)
        _, _, fake = outputs(G, self.val_set)
        row = {}
        for label, ref in (("GT", self.B), ("teacher", self.teacher_out)):
            row[f"PSNR {label}"], row[f"SSIM {label}"] = float(psnr(fake, ref).mean()), float(ssim(fake, ref).mean())
        if self.real_feats is not None:
            # KID over 50 subsets of half the images: subsets of all of them would all be the same set
            r = fid_kid(self.real_feats, fid_features(fake), kid_subsets=50,
                        kid_subset_size=max(2, len(self.real_feats) // 2))
            row["FID"], row["KID×1e3"], row["KID subset std×1e3"] = r["fid"], 1000 * r["kid_mean"], 1000 * r["kid_std"]
        return row


def run_recipe(G0, D0, TG, TD, train_set, recipe, steps, seed, out, spec, scorer) -> dict:
    """One fine-tune of a copy of the pair (cached in ``out``) and its scores (cached in ``out``/scores.json)."""
    scores_path = os.path.join(out, "scores.json")
    if os.path.exists(scores_path):
        with open(scores_path, encoding="utf-8") as fh:
            return json.load(fh)
    G = copy.deepcopy(G0).requires_grad_(True)
    D = copy.deepcopy(D0).requires_grad_(True)
    result = finetune(G, D, TG, TD, train_set, recipe=recipe, steps=steps, batch_size=1, seed=seed, out=out,
                      save_every=max(50, steps // 4), device="cpu", progress=False,
                      g_spec=spec["G"], d_spec=spec["D"])
    row = {"recipe": recipe, "seed": seed, "steps": steps, **scorer(G),
           "train s": result["train_seconds"], "steps/s": steps / result["train_seconds"]}
    atomic_write_text(scores_path, json.dumps(row, indent=1))
    return row


def summary(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean ± std over seeds per recipe: numeric (for the CSV) and as text (for the table)."""
    metrics = [c for c in METRICS if c in raw.columns]
    grouped = raw.groupby("recipe", sort=False)[metrics]
    mean, std = grouped.mean(), grouped.std()
    numeric = mean.add_suffix(" mean").join(std.add_suffix(" std"))
    numeric.insert(0, "seeds", grouped.size())
    text = mean.astype(object)
    for col in metrics:
        text[col] = ["n/a" if np.isnan(m) else f"{m:.4g}" if np.isnan(sd) else f"{m:.4g} ± {sd:.2g}"
                     for m, sd in zip(mean[col], std[col])]
    text.insert(0, "seeds", grouped.size())
    return numeric.reset_index(), text.reset_index()


def main():
    ap = parser(__doc__, "bench_recipes")
    ap.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated subset")
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds, from --seed on")
    ap.add_argument("--seed", type=int, default=0, help="the first seed")
    ap.add_argument("--no-fid", action="store_true", help="skip FID/KID (the slow part on a CPU)")
    args = ap.parse_args()
    if args.seeds < 1:
        ap.error("--seeds must be at least 1")
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = sorted(set(recipes) - set(RECIPES))
    if unknown:
        ap.error(f"--recipes: unknown {', '.join(unknown)}; expected some of {', '.join(RECIPES)}")
    torch.set_num_threads(args.threads)
    steps = steps_for(args.quick)
    os.makedirs(args.out, exist_ok=True)
    data, tdir = teacher_dir(os.environ.get("GANPRUNE_RANK_CACHE", os.path.join(args.out, "rank")), TEACHER_STEPS)
    TG, TD, g_spec, d_spec = load_pair(tdir)
    spec = {"G": g_spec, "D": d_spec}
    train_set = build_dataset(data, phase="train")
    val_set = build_dataset(data, phase="val", flip=False)
    G0, D0, (g_frac, d_frac) = pruned_pair(TG, TD, *teacher_spaces(tdir, data), train_set)
    TG.requires_grad_(False)
    TD.requires_grad_(False)

    scorer = ValScorer(TG, val_set, train_set, not args.no_fid)
    # the teacher against its own output would read 100 dB: n/a
    fixed = [{"recipe": "teacher (dense)", **scorer(TG, student=False), "PSNR teacher": np.nan, "SSIM teacher": np.nan},
             {"recipe": "pruned, no fine-tuning", **scorer(copy.deepcopy(G0))}]
    rows = []
    fid_tag = "" if args.no_fid else "_fid"
    for seed in range(args.seed, args.seed + args.seeds):
        for recipe in recipes:
            out = os.path.join(args.out, f"g{G_BUDGET:g}_d{D_BUDGET:g}", f"{recipe}_{steps}{fid_tag}", f"seed{seed}")
            row = run_recipe(G0, TD if recipe == "selfsup" else D0, TG, TD, train_set, recipe, steps, seed, out,
                             spec, scorer)
            rows.append(row)
            print(f"  {recipe:10s} seed {seed}: PSNR GT {row['PSNR GT']:.2f} dB, teacher {row['PSNR teacher']:.2f} dB"
                  + (f", KID×1e3 {row['KID×1e3']:.2f}" if "KID×1e3" in row else "")
                  + f", {row['train s']:.0f} s", flush=True)
    raw = pd.DataFrame(fixed + rows)
    numeric, text = summary(raw)
    raw.to_csv(os.path.join(args.out, f"bench_recipes_{steps}_runs.csv"), index=False)
    numeric.to_csv(os.path.join(args.out, f"bench_recipes_{steps}.csv"), index=False)
    print(f"\nteacher {tdir} ({g_spec['arch']} ngf {g_spec['ngf']}); pruned G {g_frac:.1%} MACs, D {d_frac:.1%} "
          f"MACs (selfsup: dense D), L1-kept channels; {steps} steps per recipe, batch 1, {args.threads} "
          f"thread(s); mean ± std over seeds {args.seed}..{args.seed + args.seeds - 1}; val {len(scorer.A)} "
          "images; students' BatchNorm re-estimated on the train inputs\n")
    print(text.to_markdown(index=False))


if __name__ == "__main__":
    main()
