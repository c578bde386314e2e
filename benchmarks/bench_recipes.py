"""Fine-tuning recipes side by side: same teacher, same pruned pair, same steps, same held-out data.

On the embedded edges→photo set, a Pix2Pix teacher is trained with ``ganprune.train.teacher.train_teacher``
(cached under ``--out``), G is pruned to ≈25% of its MACs and D to ≈50% by uniform width scaling
(``SearchSpace.uniform``, magnitude-ranked channels from the teacher's weights), and every recipe
fine-tunes its own copy of that pair for the same number of steps (selfsup trains the dense D, as the
method prescribes). The rows "pruned, no fine-tuning" and "teacher" bracket the results. On the
*val* split (never seen in training): PSNR (mean of per-image PSNR, images in [0, 1]) and SSIM against
the ground truth and against the teacher's output, FID and KID (× 1000, ± std over subsets) against the
val targets from FID-Inception features of N images, and training speed (steps/s, this machine's CPU).
The result is each run's last step (no picking on val).

    python benchmarks/bench_recipes.py --quick      # 64² teacher, 300 steps per recipe, N=32 for FID/KID
    python benchmarks/bench_recipes.py              # 128² teacher, 1500 steps per recipe, all val images

With ``--compare-uniform`` the recipe table is replaced by a width comparison under the density recipe:
per seed, the collaborative search (greedy G-agent + greedy D-agent, density objective, on the *train*
split only) picks widths for G at ≤25% and D at ≤50% of the teacher's MACs, and uniform width scaling
gets the largest uniform fraction whose MACs do not exceed the searched winner's (G and D separately;
the table shows both MACs percentages). Both pairs are built the same way (magnitude-ranked channels,
BatchNorm statistics re-estimated on the search's train images), fine-tuned with the density recipe for
the same steps and seed, and scored on val as above; the table is mean ± std over ``--seeds``.

    python benchmarks/bench_recipes.py --quick --compare-uniform   # 30-candidate search on 8 images, 3 seeds
    python benchmarks/bench_recipes.py --compare-uniform           # 60 candidates on 16 images, 3 seeds

Runs are resumable and cached in ``--out``: a rerun only computes what is missing (searches and
fine-tunes; the val scores are recomputed). FID at small N is biased upwards and noisy (±10 or more):
compare recipes with KID ± std, within one table.
"""
from __future__ import annotations

import copy
import os
import time

# Before torch loads OpenMP: idle threads sleep instead of spinning. On a CPU shared with other jobs,
# spinning threads made training steps far slower (measured: docs/benchmarks.md, CPU threads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd
import torch

from _common import cached_teacher, fid_features, outputs, parser
from ganprune.data.datasets import build_dataset
from ganprune.train.trainer import finetune
from ganprune.metrics.quality import fid_kid, psnr, ssim
from ganprune.search.budget import widest_uniform
from ganprune.search.setup import run_search
from ganprune.pruning.physical import prune
from ganprune.pruning.space import SearchSpace
from ganprune.train.teacher import load_teacher

RECIPES = ("pix2pix", "density", "dgl", "dcd", "gcc", "omgd", "selfsup", "cyclegan", "output_l1")


def settings(quick: bool) -> dict:
    # rounds/calib_images/seeds: the --compare-uniform search (the pipeline's quick/default sizes)
    if quick:
        return dict(size=64, arch="unet_64", ngf=16, ndf=16, teacher_steps=300, steps=300, fid_n=32,
                    rounds=30, calib_images=8, seeds=3)
    return dict(size=128, arch="unet_128", ngf=32, ndf=32, teacher_steps=1500, steps=1500, fid_n=None,
                rounds=60, calib_images=16, seeds=3)


def teacher_name(s: dict) -> str:
    return f"teacher_{s['arch']}_{s['ngf']}_{s['teacher_steps']}"


def prepare(out: str, s: dict):
    teacher_dir = os.path.join(out, teacher_name(s))
    data = cached_teacher(os.path.join(out, f"demo{s['size']}"), teacher_dir, size=s["size"], arch=s["arch"],
                          ngf=s["ngf"], ndf=s["ndf"], steps=s["teacher_steps"])
    return (data, *load_teacher(teacher_dir))


def closest_uniform(space: SearchSpace, target: float) -> tuple[dict, float]:
    """The uniform width fraction whose MACs come closest to ``target`` × the dense MACs."""
    full = space.macs(space.full_widths())
    best = min((abs(space.macs(space.uniform(f)) / full - target), f) for f in np.linspace(0.05, 1.0, 96))
    widths = space.uniform(best[1])
    return widths, space.macs(widths) / full


class ValScorer:
    """Scores generators on the val split against the ground truth, the teacher's output and (FID/KID)
    the val targets; the teacher's outputs and the real features are computed once."""

    def __init__(self, TG, val_set, fid_n=None, use_fid=True):
        self.val_set = val_set
        self.A, self.B, self.teacher_out = outputs(TG, val_set)
        self.fid_n = fid_n or len(self.A)
        self.real_feats = fid_features(self.B[:self.fid_n]) if use_fid else None

    def __call__(self, name, G, extra) -> dict:
        _, _, fake = outputs(G, self.val_set)
        row = {"recipe": name, **extra}
        for label, ref in (("GT", self.B), ("teacher", self.teacher_out)):
            row[f"PSNR {label}"], row[f"SSIM {label}"] = float(psnr(fake, ref).mean()), float(ssim(fake, ref).mean())
        if self.real_feats is not None:
            # KID over 50 subsets of half the images (at most 1000): subsets of all would all be the same set
            r = fid_kid(self.real_feats, fid_features(fake[:self.fid_n]), kid_subsets=50,
                        kid_subset_size=max(2, min(len(self.real_feats), 2000) // 2))
            row["FID"], row["KID×1e3"], row["KID std×1e3"] = r["fid"], 1000 * r["kid_mean"], 1000 * r["kid_std"]
        print(f"  {name:24s} PSNR GT {row['PSNR GT']:.2f} dB  PSNR teacher {row['PSNR teacher']:.2f} dB"
              + (f"  FID {row['FID']:.1f}  KID×1e3 {row['KID×1e3']:.2f}" if "FID" in row else ""), flush=True)
        return row


def finetune_copy(G0, D0, TG, TD, train_set, recipe, s, seed, out, spec):
    """A fine-tuned copy of G0 (trained with a copy of D0), and its speed (NaN where the run was cached)."""
    G = copy.deepcopy(G0).requires_grad_(True)
    D = copy.deepcopy(D0).requires_grad_(True)
    start = time.perf_counter()
    result = finetune(G, D, TG, TD, train_set, recipe=recipe, steps=s["steps"], batch_size=1, seed=seed, out=out,
                      save_every=max(50, s["steps"] // 4), device="cpu", progress=True,
                      g_spec=spec["G"], d_spec=spec["D"])
    wall = time.perf_counter() - start
    return G, {"steps/s": result["steps_per_s"] or float("nan"),
               "train s": wall if result["steps_run"] else float("nan")}


def compare_uniform(args, s, data, TG, TD, spec, train_set, scorer) -> pd.DataFrame:
    """Searched vs uniformly scaled widths at equal (or lower) MACs, both fine-tuned with the density recipe;
    one row per (seed, widths, stage)."""
    seeds = range(args.seed, args.seed + (args.seeds or s["seeds"]))
    root = os.path.join(args.out, f"compare_{teacher_name(s)}_r{s['rounds']}_c{s['calib_images']}")
    rows = [scorer("teacher (dense)", TG, {"widths": "teacher (dense)", "stage": "", "G MACs %": 100.0,
                                           "D MACs %": 100.0})]
    for seed in seeds:
        run = os.path.join(root, f"seed{seed}")
        result = run_search(TG, TD, spec["G"], spec["D"], data, os.path.join(run, "search"), phase="train",
                            calib_images=s["calib_images"], g_budget=0.25, d_budget=0.5, g_agent="greedy",
                            d_agent="greedy", rounds=s["rounds"], seed=seed, progress=True)
        if result.best is None:
            raise SystemExit(f"seed {seed}: no candidate met both budgets in {s['rounds']} rounds; raise rounds")
        ev = result.evaluator
        g_space, d_space = ev.g_space, ev.d_space
        g_full, d_full = g_space.macs(g_space.full_widths()), d_space.macs(d_space.full_widths())
        # where no uniform fraction fits, widest_uniform gives the smallest widths: never above the winner's MACs
        g_uni, d_uni = widest_uniform(g_space, result.best["g_macs"]), widest_uniform(d_space, result.best["d_macs"])
        pairs = {"searched": (result.best["g_widths"], result.best["d_widths"]), "uniform": (g_uni, d_uni)}
        print(f"seed {seed}: search {len(result.history)} candidates ({result.seconds:.1f} s); uniform widths "
              f"G {100 * g_space.macs(g_uni) / g_full:.1f}%, D {100 * d_space.macs(d_uni) / d_full:.1f}% MACs",
              flush=True)
        for kind, (g_w, d_w) in pairs.items():
            print(f"  {kind} G widths {g_space.validate(g_w)}\n  {kind} D widths {d_space.validate(d_w)}")
            # the search's own builder: same channel ranking and BatchNorm re-estimation for both pairs;
            # seeded, as that re-estimation runs G in train mode (dropout), whether the search ran or replayed
            torch.manual_seed(seed)
            G0, D0 = ev.build_pair(g_w, d_w)
            meta = {"widths": kind, "seed": seed, "G MACs %": 100 * g_space.macs(g_w) / g_full,
                    "D MACs %": 100 * d_space.macs(d_w) / d_full}
            rows.append(scorer(f"{kind}, no fine-tuning", G0, {**meta, "stage": "pruned, no fine-tuning"}))
            G, timing = finetune_copy(G0, D0, TG, TD, train_set, "density", s, seed,
                                      os.path.join(run, f"ft_{kind}_{s['steps']}"), spec)
            rows.append(scorer(f"{kind}, density", G, {**meta, "stage": "density fine-tuned", **timing}))
    return pd.DataFrame(rows)


def mean_std(raw: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean ± std over seeds per (widths, stage): numeric (for the CSV) and as text (for the table)."""
    metrics = [c for c in raw.columns if c not in ("recipe", "widths", "stage", "seed", "KID std×1e3")]
    grouped = raw.groupby(["widths", "stage"], sort=False)[metrics]
    mean, std = grouped.mean(), grouped.std()
    numeric = mean.add_suffix(" mean").join(std.add_suffix(" std"))
    numeric.insert(0, "seeds", grouped.size())
    text = mean.astype(object)
    for col in metrics:
        text[col] = ["n/a" if np.isnan(m) else f"{m:.4g}" if np.isnan(sd) else f"{m:.4g} ± {sd:.2g}"
                     for m, sd in zip(mean[col], std[col])]
    return numeric.reset_index(), text.reset_index()


def main():
    ap = parser(__doc__, "bench_recipes")
    ap.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated subset")
    ap.add_argument("--no-fid", action="store_true", help="skip FID/KID (the slow part on a CPU)")
    ap.add_argument("--seed", type=int, default=0, help="the (first) seed")
    ap.add_argument("--compare-uniform", action="store_true",
                    help="instead of the recipe table: density recipe on searched vs uniformly scaled widths")
    ap.add_argument("--seeds", type=int, default=None,
                    help="--compare-uniform: number of seeds, from --seed on (default 3)")
    args = ap.parse_args()
    if args.seeds is not None and args.seeds < 1:
        ap.error("--seeds must be at least 1")
    torch.set_num_threads(args.threads)
    s = settings(args.quick)
    os.makedirs(args.out, exist_ok=True)
    data, TG, TD, spec = prepare(args.out, s)

    train_set = build_dataset(data, phase="train")
    val_set = build_dataset(data, phase="val", flip=False)
    if args.compare_uniform:
        TG.requires_grad_(False)
        TD.requires_grad_(False)
        scorer = ValScorer(TG, val_set, s["fid_n"], not args.no_fid)
        raw = compare_uniform(args, s, data, TG, TD, spec, train_set, scorer)
        numeric, text = mean_std(raw)
        raw.to_csv(os.path.join(args.out, f"compare_uniform_{s['size']}_runs.csv"), index=False)
        numeric.to_csv(os.path.join(args.out, f"compare_uniform_{s['size']}.csv"), index=False)
        n_seeds = args.seeds or s["seeds"]
        print(f"\nteacher {spec['G']['arch']} ngf {spec['G']['ngf']} ({s['teacher_steps']} steps) at {s['size']}²; "
              f"search: greedy G + greedy D agents, density objective, G ≤25% / D ≤50% MACs, {s['rounds']} "
              f"candidates on {s['calib_images']} train images; uniform: largest uniform widths within the "
              f"searched MACs; density recipe, {s['steps']} steps, batch 1, {args.threads} thread(s); "
              f"mean ± std over {n_seeds} seed(s); val {len(scorer.A)} images"
              + ("" if args.no_fid else f", FID/KID on {scorer.fid_n}") + "; steps/s n/a = cached run\n")
        print(text.to_markdown(index=False))
        return

    x = torch.zeros(1, 3, s["size"], s["size"])
    xd = torch.zeros(1, spec["D"]["input_nc"], s["size"], s["size"])
    g_widths, g_frac = closest_uniform(SearchSpace.from_model(TG, x, arch=spec["G"]["arch"]), 0.25)
    d_widths, d_frac = closest_uniform(SearchSpace.from_model(TD, xd, arch=spec["D"]["arch"]), 0.5)
    G0, D0 = prune(TG, g_widths, x), prune(TD, d_widths, xd)
    TG.requires_grad_(False)
    TD.requires_grad_(False)

    scorer = ValScorer(TG, val_set, s["fid_n"], not args.no_fid)
    rows = [scorer("teacher (dense)", TG, {}), scorer("pruned, no fine-tuning", G0, {})]
    for recipe in [r.strip() for r in args.recipes.split(",") if r.strip()]:
        G, timing = finetune_copy(G0, TD if recipe == "selfsup" else D0, TG, TD, train_set, recipe, s, args.seed,
                                  os.path.join(args.out, f"ft_{s['size']}_{recipe}_{s['steps']}"), spec)
        rows.append(scorer(recipe, G, timing))
    table = pd.DataFrame(rows)
    table.to_csv(os.path.join(args.out, f"bench_recipes_{s['size']}.csv"), index=False)
    print(f"\nteacher {spec['G']['arch']} ngf {spec['G']['ngf']} ({s['teacher_steps']} steps) at {s['size']}²; "
          f"pruned G {g_frac:.1%} MACs, D {d_frac:.1%} MACs (selfsup: dense D); {s['steps']} steps per recipe, "
          f"batch 1, {args.threads} thread(s); val {len(scorer.A)} images"
          + ("" if args.no_fid else f", FID/KID on {scorer.fid_n}") + "; steps/s NaN = cached run\n")
    print(table.to_markdown(index=False, floatfmt=".4g"))


if __name__ == "__main__":
    main()
