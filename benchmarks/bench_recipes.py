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

import argparse
import copy
import os
import time

# Before torch loads OpenMP: idle threads sleep instead of spinning. On a CPU shared with other jobs,
# spinning threads made training steps far slower (measured: docs/benchmarks.md, CPU threads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pandas as pd
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from ganprune.data.datasets import build_dataset
from ganprune.data.demo import make_demo
from ganprune.train.trainer import finetune
from ganprune.metrics.quality import frechet_distance
from ganprune.search.setup import run_search
from ganprune.pruning.physical import prune
from ganprune.pruning.space import SearchSpace
from ganprune.train.teacher import load_teacher, train_teacher

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
    data = os.path.join(out, f"demo{s['size']}")
    make_demo(data, size=s["size"])
    teacher_dir = os.path.join(out, teacher_name(s))
    train_teacher(data, teacher_dir, arch=s["arch"], ngf=s["ngf"], ndf=s["ndf"], steps=s["teacher_steps"],
                  batch_size=4, save_every=max(100, s["teacher_steps"] // 4), eval_every=0, progress=True)
    G, D, spec = load_teacher(teacher_dir)
    return data, G, D, spec


def closest_uniform(space: SearchSpace, target: float) -> tuple[dict, float]:
    """The uniform width fraction whose MACs come closest to ``target`` × the dense MACs."""
    full = space.macs(space.full_widths())
    best = min((abs(space.macs(space.uniform(f)) / full - target), f) for f in np.linspace(0.05, 1.0, 96))
    widths = space.uniform(best[1])
    return widths, space.macs(widths) / full


def largest_uniform_within(space: SearchSpace, max_macs: int) -> tuple[dict, float]:
    """The uniformly scaled widths with the most MACs not above ``max_macs``, and their width fraction.

    Fractions are tried in 0.25% steps, finer than the spacing of the space's width choices."""
    best = None
    for f in np.arange(0.0025, 1.0001, 0.0025):
        widths = space.uniform(float(f))
        macs = space.macs(widths)
        if macs <= max_macs and (best is None or macs > best[0]):
            best = (macs, float(f), widths)
    if best is None:
        raise SystemExit(f"no uniform width fraction stays within {max_macs} MACs")
    return best[2], best[1]


@torch.no_grad()
def outputs(G, dataset, n=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    G.eval()
    items = [dataset[i] for i in range(len(dataset) if n is None else min(n, len(dataset)))]
    A = torch.stack([it["A"] for it in items])
    B = torch.stack([it["B"] for it in items])
    fake = torch.cat([G(A[i:i + 16]) for i in range(0, len(A), 16)])
    return A, B, fake


def psnr_ssim(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    x, y = (x.clamp(-1, 1) + 1) / 2, (y.clamp(-1, 1) + 1) / 2
    mse = ((x - y) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    psnr = (10 * torch.log10(1.0 / mse)).mean().item()
    return psnr, structural_similarity_index_measure(x, y, data_range=1.0).item()


def fid_features(images: torch.Tensor) -> np.ndarray:
    from ganprune.metrics.fid_inception import FIDInceptionFeatures
    net = FIDInceptionFeatures()
    with torch.no_grad():
        return torch.cat([net(images[i:i + 8]) for i in range(0, len(images), 8)]).double().numpy()


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 50, size: int | None = None, seed: int = 0):
    """Unbiased MMD² with the cubic polynomial kernel (Bińkowski et al.), mean ± std over subsets."""
    rng = np.random.default_rng(seed)
    # subsets of half the samples (at most 1000): subsets of all of them would all be the same set
    size = size or max(2, min(len(a), len(b), 2000) // 2)
    d = a.shape[1]
    values = []
    for _ in range(subsets):
        x, y = a[rng.choice(len(a), size, replace=False)], b[rng.choice(len(b), size, replace=False)]
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        m = size
        values.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                      - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


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
        row["PSNR GT"], row["SSIM GT"] = psnr_ssim(fake, self.B)
        row["PSNR teacher"], row["SSIM teacher"] = psnr_ssim(fake, self.teacher_out)
        if self.real_feats is not None:
            feats = fid_features(fake[:self.fid_n])
            # exact, via an SVD of the small feature-product matrix: scipy's sqrtm of the 2048² covariance
            # product is far slower (docs/benchmarks.md, other measured figures)
            row["FID"] = frechet_distance(torch.from_numpy(self.real_feats), torch.from_numpy(feats))
            row["KID×1e3"], row["KID std×1e3"] = (1000 * v for v in kid(feats, self.real_feats))
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
        g_uni, g_f = largest_uniform_within(g_space, int(result.best["g_macs"]))
        d_uni, d_f = largest_uniform_within(d_space, int(result.best["d_macs"]))
        pairs = {"searched": (result.best["g_widths"], result.best["d_widths"]), "uniform": (g_uni, d_uni)}
        print(f"seed {seed}: search {len(result.history)} candidates ({result.seconds:.1f} s); uniform width "
              f"fractions G {g_f:.4g}, D {d_f:.4g}", flush=True)
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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="runs/bench_recipes")
    ap.add_argument("--threads", type=int, default=2)
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
