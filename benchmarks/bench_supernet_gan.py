"""Supernet trained with L1 to the teacher alone vs L1 + the adversarial term (``--supernet-lambda-gan``).

The benchmark teacher (``bench_rank.teacher_dir``: unet_64, ngf 32, gray→color at 64², cached, never
retrained here) is distilled into a supernet on its ``train`` split with each loss, per seed. The uniform
slice at each G MACs budget (``search.budget.uniform_widths``) is taken as the search takes it (``Supernet.
extract``, BatchNorm re-estimated on the evaluator's calibration images, ``CandidateEvaluator.build_pair``)
and scored on the held-out ``val`` split without any fine-tuning: PSNR to the ground truth and to the
teacher's outputs. The inherited slice (teacher weights, no supernet) is the reference row. Each run's
seconds per supernet step come from its state file. Supernets are kept under ``--runs`` and reused.

    python benchmarks/bench_supernet_gan.py --quick            # 300 steps, 1 seed
    python benchmarks/bench_supernet_gan.py --variants 300:0,300:0.01,300:0.1,600:0   # 2 seeds
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd
import torch

from _common import outputs
from bench_rank import TEACHER, prepare
from ganprune.data.datasets import build_dataset
from ganprune.metrics.quality import psnr
from ganprune.scoring.candidates import calibration_batches
from ganprune.search.budget import uniform_widths
from ganprune.search.setup import build_evaluator
from ganprune.search.supernet import STATE_FILE, train_supernet


def slice_scores(ev, widths, val, teacher_val) -> dict:
    """PSNR (dB, mean over val) of a candidate as the evaluator builds it, to ground truth and to the teacher."""
    g, _ = ev.build_pair(widths, ev.d_space.full_widths())
    _, B, fake = outputs(g, val)
    return {"psnr_gt": float(psnr(fake, B).mean()), "psnr_teacher": float(psnr(fake, teacher_val).mean())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 seed (default 2)")
    cache = os.environ.get("GANPRUNE_CACHE", "bench_out")
    p.add_argument("--out", default=os.environ.get("GANPRUNE_RANK_CACHE") or os.path.join(cache, "rank"),
                   help="bench_rank's folder, where its teacher is (only read once it is there)")
    p.add_argument("--runs", default=os.path.join(cache, "supernet_gan"), help="where the supernets go")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", type=int)
    p.add_argument("--lambda-gan", type=float, default=0.01, help="the adversarial weight compared with 0")
    p.add_argument("--variants", help="supernets to compare as STEPS:LAMBDA_GAN, comma-separated (default: "
                   "STEPS:0,STEPS:LAMBDA_GAN; e.g. 600:0 is an L1 supernet given about the GAN one's time)")
    p.add_argument("--budgets", default="0.10,0.05", help="G MACs fractions, comma-separated")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 2)
    budgets = [float(b) for b in args.budgets.split(",")]
    torch.set_num_threads(args.threads)
    runs = args.runs
    data, T_G, T_D, spec = prepare(args.out, TEACHER["steps"])
    train = build_dataset(data, mode="aligned", phase="train")
    val = build_dataset(data, mode="aligned", phase="val")
    batches = calibration_batches(data, "train", n_images=32, batch_size=8)
    ev = build_evaluator(T_G, T_D, batches, g_spec=spec["G"], d_spec=spec["D"])
    _, val_B, teacher_val = outputs(T_G, val)
    full = ev.g_space.macs(ev.g_space.full_widths())
    widths = {b: uniform_widths(ev.g_space, b * full) for b in budgets}
    cap = min(1.0, round(1.2 * max(budgets), 4))   # as attach_supernet caps random slices
    rows = [{"supernet": "none (teacher weights)", "seed": "", "s_per_step": float("nan"), "budget": b,
             **slice_scores(ev, w, val, teacher_val)} for b, w in widths.items()]
    spelled = args.variants or f"{args.steps}:0,{args.steps}:{args.lambda_gan}"
    variants = [(int(a), float(b)) for a, b in (v.split(":") for v in spelled.split(","))]
    for seed in range(seeds):
        for steps, lam in variants:
            name = ("L1" if not lam else f"L1 + {lam:g}·GAN") + f", {steps} steps"
            out = os.path.join(runs, f"steps{steps}_gan{lam:g}_seed{seed}")
            t = time.perf_counter()
            sn = train_supernet(T_G, ev.g_space, train, out, steps=steps, batch_size=4, ranking=ev.g_ranking,
                                device="cpu", max_macs=cap, seed=seed, lambda_gan=lam, teacher_D=T_D,
                                conditional_D=ev.conditional_D)
            state = torch.load(os.path.join(out, STATE_FILE), weights_only=True)
            pace = state["train_seconds"] / state["step"]
            print(f"{name} seed {seed}: {pace:.2f} s/step ({time.perf_counter() - t:.0f} s this run)", flush=True)
            ev.use_supernet(sn)
            for b, w in widths.items():
                rows.append({"supernet": name, "seed": seed, "s_per_step": pace, "budget": b,
                             **slice_scores(ev, w, val, teacher_val)})
            ev.supernet = None
    df = pd.DataFrame(rows)
    print(f"\nteacher: PSNR to ground truth {float(psnr(teacher_val, val_B).mean()):.2f} dB on {len(val)} val images; "
          "uniform slices, BN re-estimated, no fine-tuning")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    summary = df.groupby(["budget", "supernet"], sort=False).agg(
        psnr_gt=("psnr_gt", "mean"), psnr_gt_std=("psnr_gt", lambda v: float(np.std(v))),
        psnr_teacher=("psnr_teacher", "mean"), psnr_teacher_std=("psnr_teacher", lambda v: float(np.std(v))),
        s_per_step=("s_per_step", "mean"), runs=("psnr_gt", "size"))
    print("\nmean (std over seeds):")
    print(summary.to_string(float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
