"""Search quality before fine-tuning: collaborative greedy / RL vs random vs uniform width scaling.

One command, one table. On the embedded edges→photo data with a teacher trained by
``ganprune.train.teacher.train_teacher``, at G budgets of 25% and 10% MACs (D budget 50%), each method gets the
same number of candidate evaluations on the *train* split; its winner is then scored on the held-out
*val* split: density discrepancy, PSNR vs the teacher output, G/D balance. ``cost ×fwd`` is the time to
score one candidate divided by one forward of the winning (pruned) student G over the perturbed
calibration inputs the objective scores (B·m images).

    python benchmarks/bench_search.py --quick      # a few minutes on 2 CPU cores
    python benchmarks/bench_search.py              # larger teacher, 128², more rounds
"""
from __future__ import annotations

import os
import time

import pandas as pd
import torch

from _common import cached_teacher, parser
from ganprune.data.datasets import build_dataset
from ganprune.search.agent import get_agent
from ganprune.scoring.candidates import CandidateEvaluator, calibration_batches, item_batches
from ganprune.search.setup import build_evaluator
from ganprune.search.budget import resolve_macs
from ganprune.search.loop import search
from ganprune.train.teacher import load_teacher

METHODS = {  # name: (G agent, D agent); "uniform" = the widest uniform scaling that fits (one candidate)
    "collab greedy": ("greedy", "greedy"),
    "collab rl": ("rl", "rl"),
    "random": ("random", "random"),
    "uniform": ("template", "template"),
}


def settings(quick: bool) -> dict:
    if quick:
        return dict(size=64, arch="unet_64", ngf=16, ndf=16, steps=300, rounds=30, calib=16, val=16, m=4)
    return dict(size=128, arch="unet_128", ngf=32, ndf=32, steps=1500, rounds=80, calib=32, val=29, m=8)


def prepare(out: str, s: dict):
    teacher_dir = os.path.join(out, f"teacher_{s['arch']}_{s['ngf']}_{s['steps']}")
    data = cached_teacher(os.path.join(out, f"demo{s['size']}"), teacher_dir, size=s["size"], arch=s["arch"],
                          ngf=s["ngf"], ndf=s["ndf"], steps=s["steps"])
    return (data, *load_teacher(teacher_dir))


def main():
    ap = parser(__doc__, "bench_search")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    s = settings(args.quick)
    os.makedirs(args.out, exist_ok=True)
    data, G, D, spec = prepare(args.out, s)

    batches = calibration_batches(data, phase="train", n_images=s["calib"], batch_size=8)
    val_set = build_dataset(data, phase="val", flip=False)
    val = item_batches([val_set[i] for i in range(min(s["val"], len(val_set)))], 8, "val")
    search_eval = build_evaluator(G, D, batches, g_spec=spec["G"], d_spec=spec["D"], m=s["m"], seed=args.seed)
    report_eval = CandidateEvaluator(G, D, search_eval.g_space, search_eval.d_space, val, search_eval.objective,
                                     allow_evaluation_split=True)
    dense_forward = min(search_eval.forward_seconds() for _ in range(3))
    g_full = search_eval.g_space.macs(search_eval.g_space.full_widths())
    d_full = search_eval.d_space.macs(search_eval.d_space.full_widths())
    d_max = resolve_macs(0.5, d_full)

    rows = []
    for budget in (0.25, 0.10):
        g_max = resolve_macs(budget, g_full)
        for method, (g_name, d_name) in METHODS.items():
            g_agent = get_agent(g_name)(search_eval.g_space, g_max, seed=args.seed, role="G")
            d_agent = get_agent(d_name)(search_eval.d_space, d_max, seed=args.seed + 1, role="D")
            rounds = 1 if method == "uniform" else s["rounds"]
            start = time.perf_counter()
            result = search(search_eval, g_agent, d_agent, g_max, d_max, rounds=rounds, progress=False)
            wall = time.perf_counter() - start
            best = result.best
            if best is None:
                rows.append({"G budget": f"{budget:.0%}", "method": method, "candidates": len(result.history),
                             "wall s": wall, "search score": float("nan")})
                print(f"  {method:14s} @ {budget:.0%}: no feasible pair in {rounds} rounds", flush=True)
                continue
            held_out = report_eval.score_pair(best["g_widths"], best["d_widths"])
            per_candidate = result.history["seconds"].mean()
            student, _ = search_eval.build_pair(best["g_widths"], best["d_widths"])
            forward = min(search_eval.forward_seconds(student) for _ in range(3))
            rows.append({"G budget": f"{budget:.0%}", "method": method,
                         "G MACs %": 100 * best["g_macs"] / g_full, "D MACs %": 100 * best["d_macs"] / d_full,
                         "search score": best["score"], "val density": held_out["density"],
                         "val pooled PSNR vs teacher": held_out["psnr_pooled"], "val balance": held_out["balance"],
                         "candidates": len(result.history), "wall s": wall, "cost ×fwd": per_candidate / forward})
            print(f"  {method:14s} @ {budget:.0%}: search {best['score']:.4f}  val density {held_out['density']:.4f}"
                  f"  pooled PSNR {held_out['psnr_pooled']:.2f} dB  ({wall:.0f} s)", flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(os.path.join(args.out, "bench_search.csv"), index=False)
    print(f"\nteacher {spec['G']['arch']} ngf {spec['G']['ngf']} ({s['steps']} steps) at {s['size']}²; "
          f"calibration {s['calib']} train images, m={s['m']}; held-out: {s['val']} val images; "
          f"{args.threads} threads; dense-G forward over the calibration inputs = {dense_forward * 1000:.0f} ms\n")
    print(table.to_markdown(index=False, floatfmt=".4g"))


if __name__ == "__main__":
    main()
