"""Headline benchmark: the whole pipeline vs uniform L1 channel pruning vs random search, same fine-tune.

On the embedded demo data with the demo teacher, at G budgets of 25% and 10% MACs (D 50%), three seeds
each: ``ganprune`` (collaborative greedy or RL G/D agents, density objective), ``uniform L1`` (every group scaled
by the same fraction, channels kept by L1 magnitude) and ``random search`` (random G/D agents, same number
of candidates). All three get the same fine-tune (density recipe, same steps) and are evaluated on the
held-out val split. Prints mean ± std over seeds as a Markdown table.

    python benchmarks/bench_pipeline.py --quick     # a few minutes on 2 CPU cores (no FID)
    python benchmarks/bench_pipeline.py             # 128² teacher, FID/KID on the val split

Every run is a resumable ``run_pipeline`` output folder under ``--out``: a rerun (e.g. with another
``--budgets`` list) skips what is finished and only prints the table again.
"""
from __future__ import annotations

import argparse
import os
import time

import pandas as pd
import torch

from ganprune.pipeline import run_pipeline
from ganprune.teacher import demo_teacher

METHODS = {  # name: (G agent, D agent, rounds override, channel importance, fill the unused budget)
    "ganprune (collab greedy)": ("greedy", "greedy", None, "l2", True),
    "ganprune (collab rl)": ("rl", "rl", None, "l2", True),
    "uniform L1": ("template", "template", 1, "l1", False),   # filling would make it non-uniform
    "random search": ("random", "random", None, "l2", True),
}


def settings(quick: bool) -> dict:
    if quick:
        return dict(rounds=40, calib_images=8, finetune_steps=100, fid=False, eval_images=16)
    return dict(rounds=60, calib_images=16, finetune_steps=600, fid=True, eval_images=None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="runs/bench_pipeline")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budgets", default="0.25,0.10", help="G MACs budgets, comma-separated (default 0.25,0.10)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    s = settings(args.quick)
    # The 128² demo teacher (unet_128, ngf 16) in both modes: the quick demo teacher's ngf 8 cannot go
    # below ~18% of its MACs at the smallest allowed widths, so a 10% budget would be infeasible.
    teacher = demo_teacher(os.path.join(args.out, "data"), quick=False, progress=True)

    rows = []
    for budget in (float(b) for b in args.budgets.split(",")):
        for method, (g_agent, d_agent, rounds, importance, fill) in METHODS.items():
            for seed in range(args.seeds):
                folder = method.split()[0].lower() + ("_rl" if "rl" in method else "")
                out = os.path.join(args.out, f"b{int(budget * 100)}", folder, f"seed{seed}")
                config = {"teacher": os.fspath(teacher["out"]), "dataroot": os.fspath(teacher["dataroot"]),
                          "g_budget": budget, "d_budget": 0.5, "g_agent": g_agent, "d_agent": d_agent,
                          "importance": importance, "fill": fill, "recipe": "density", "latency": True, "seed": seed,
                          **s, "rounds": rounds or s["rounds"]}
                start = time.perf_counter()
                result = run_pipeline(config, out, progress=False)
                table = result["table"].set_index("model")
                final, dense = table.loc["pruned + fine-tuned"], table.loc["teacher"]
                rows.append({"G budget": f"{budget:.0%}", "method": method, "seed": seed,
                             "G MACs %": 100 * final["GMACs"] / dense["GMACs"], "G params M": final["params (M)"],
                             "PSNR": final["PSNR"], "PSNR vs teacher": final["PSNR vs teacher"],
                             "FID": final.get("FID", float("nan")), "KID": final.get("KID", float("nan")),
                             "ORT speedup ×": dense["ms onnxruntime"] / final["ms onnxruntime"],
                             "wall s": time.perf_counter() - start})
                print(f"  {method:26s} {budget:.0%} seed {seed}: PSNR {final['PSNR']:.2f}  "
                      f"vs teacher {final['PSNR vs teacher']:.2f}", flush=True)
    raw = pd.DataFrame(rows)
    raw.to_csv(os.path.join(args.out, "bench_pipeline_runs.csv"), index=False)
    metrics = [c for c in ("G MACs %", "G params M", "PSNR", "PSNR vs teacher", "FID", "KID", "ORT speedup ×")
               if raw[c].notna().any()]
    grouped = raw.groupby(["G budget", "method"], sort=False)[metrics]
    mean, std = grouped.mean(), grouped.std()
    summary = mean.copy().astype(object)
    for col in metrics:
        summary[col] = [f"{m:.3g} ± {sd:.2g}" for m, sd in zip(mean[col], std[col])]
    on = "val split" if s["eval_images"] is None else f"first {s['eval_images']} val images"
    print(f"\nteacher {teacher['out']}; {args.seeds} seeds; fine-tune: density recipe, {s['finetune_steps']} "
          f"steps; search: {s['rounds']} candidates on {s['calib_images']} train images; evaluation: {on}"
          f"{', FID/KID on' if s['fid'] else ', no FID (--quick)'}; PSNR per-image mean on [0,1]; "
          f"latency batch 1, {args.threads} threads\n")
    print(summary.reset_index().to_markdown(index=False))


if __name__ == "__main__":
    main()
