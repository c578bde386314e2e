"""Fine-tuning recipes side by side: same teacher, same pruned pair, same steps, same held-out data.

On the embedded edges→photo set, a Pix2Pix teacher is trained with ``ganprune.teacher.train_teacher``
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

Runs are resumable and cached in ``--out``: a rerun only computes what is missing. FID at small N is
biased upwards and noisy (±10 or more): compare recipes with KID ± std, within one table.
"""
from __future__ import annotations

import argparse
import copy
import os
import time

import numpy as np
import pandas as pd
import torch
from scipy import linalg
from torchmetrics.functional.image import structural_similarity_index_measure

from ganprune.data import build_dataset, make_demo
from ganprune.finetune import finetune
from ganprune.prune import prune
from ganprune.space import SearchSpace
from ganprune.teacher import load_teacher, train_teacher

RECIPES = ("pix2pix", "density", "dgl", "dcd", "gcc", "selfsup", "cyclegan")


def settings(quick: bool) -> dict:
    if quick:
        return dict(size=64, arch="unet_64", ngf=16, ndf=16, teacher_steps=300, steps=300, fid_n=32)
    return dict(size=128, arch="unet_128", ngf=32, ndf=32, teacher_steps=1500, steps=1500, fid_n=None)


def prepare(out: str, s: dict):
    data = os.path.join(out, f"demo{s['size']}")
    make_demo(data, size=s["size"])
    teacher_dir = os.path.join(out, f"teacher_{s['arch']}_{s['ngf']}_{s['teacher_steps']}")
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


def fid(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(cov_a @ cov_b)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean.real))


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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="runs/bench_recipes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated subset")
    ap.add_argument("--no-fid", action="store_true", help="skip FID/KID (the slow part on a CPU)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    s = settings(args.quick)
    os.makedirs(args.out, exist_ok=True)
    data, TG, TD, spec = prepare(args.out, s)

    train_set = build_dataset(data, phase="train")
    val_set = build_dataset(data, phase="val", flip=False)
    x = torch.zeros(1, 3, s["size"], s["size"])
    xd = torch.zeros(1, spec["D"]["input_nc"], s["size"], s["size"])
    g_widths, g_frac = closest_uniform(SearchSpace.from_model(TG, x, arch=spec["G"]["arch"]), 0.25)
    d_widths, d_frac = closest_uniform(SearchSpace.from_model(TD, xd, arch=spec["D"]["arch"]), 0.5)
    G0, D0 = prune(TG, g_widths, x), prune(TD, d_widths, xd)
    TG.requires_grad_(False)
    TD.requires_grad_(False)

    A, B, teacher_out = outputs(TG, val_set)
    fid_n = s["fid_n"] or len(A)
    real_feats = None if args.no_fid else fid_features(B[:fid_n])

    def score(name, G, extra):
        _, _, fake = outputs(G, val_set)
        row = {"recipe": name, **extra}
        row["PSNR GT"], row["SSIM GT"] = psnr_ssim(fake, B)
        row["PSNR teacher"], row["SSIM teacher"] = psnr_ssim(fake, teacher_out)
        if real_feats is not None:
            feats = fid_features(fake[:fid_n])
            row["FID"] = fid(feats, real_feats)
            row["KID×1e3"], row["KID std×1e3"] = (1000 * v for v in kid(feats, real_feats))
        print(f"  {name:24s} PSNR GT {row['PSNR GT']:.2f} dB  PSNR teacher {row['PSNR teacher']:.2f} dB"
              + (f"  FID {row['FID']:.1f}  KID×1e3 {row['KID×1e3']:.2f}" if "FID" in row else ""), flush=True)
        return row

    rows = [score("teacher (dense)", TG, {}), score("pruned, no fine-tuning", G0, {})]
    for recipe in [r.strip() for r in args.recipes.split(",") if r.strip()]:
        G = copy.deepcopy(G0).requires_grad_(True)
        D = copy.deepcopy(TD if recipe == "selfsup" else D0).requires_grad_(True)
        start = time.perf_counter()
        result = finetune(G, D, TG, TD, train_set, recipe=recipe, steps=s["steps"], batch_size=1, seed=args.seed,
                          out=os.path.join(args.out, f"ft_{s['size']}_{recipe}_{s['steps']}"),
                          save_every=max(50, s["steps"] // 4), device="cpu", progress=True,
                          g_spec=spec["G"], d_spec=spec["D"])
        wall = time.perf_counter() - start
        rate = result["steps_per_s"]
        rows.append(score(recipe, G, {"steps/s": rate if rate else float("nan"),
                                      "train s": wall if result["steps_run"] else float("nan")}))
    table = pd.DataFrame(rows)
    table.to_csv(os.path.join(args.out, f"bench_recipes_{s['size']}.csv"), index=False)
    print(f"\nteacher {spec['G']['arch']} ngf {spec['G']['ngf']} ({s['teacher_steps']} steps) at {s['size']}²; "
          f"pruned G {g_frac:.1%} MACs, D {d_frac:.1%} MACs (selfsup: dense D); {s['steps']} steps per recipe, "
          f"batch 1, {args.threads} thread(s); val {len(A)} images"
          + ("" if args.no_fid else f", FID/KID on {fid_n}") + "; steps/s NaN = cached run\n")
    print(table.to_markdown(index=False, floatfmt=".4g"))


if __name__ == "__main__":
    main()
