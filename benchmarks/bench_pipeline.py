"""Headline benchmark: the whole pipeline vs uniform pruning vs random search, same fine-tune, same teacher.

The rank benchmark's teacher (``bench_rank.py``: gray→color unet_64/ngf 32, 3,000 steps; judged on the 143
held-out val crops from photos that training and search never see), at G budgets of 25% and 10% MACs (D 50%),
three seeds each. Every method is one ``run_pipeline`` run with the same fine-tune (density recipe) and
evaluation; every method fills its budget (equal G MACs within 1%):

* ``ganprune (greedy agents)`` — the defaults: supernet (``supernet_steps`` 300), collaborative greedy G/D
  agents scoring slices with the density objective (uniform pruning scored too), the winner fine-tuned from its
  slice;
* ``ganprune (RL agents)`` — the same with the RL agents;
* ``random search (supernet)`` — random G/D agents, same supernet, same number of candidates: the agents' own
  worth, with the supernet's head start held equal;
* the same three with ``finalists`` 4: the best four pairs and uniform distilled 60 steps and scored again;
* ``uniform (supernet slice)`` — every group at the same fraction, filled to the budget, fine-tuned from its
  supernet slice: the supernet without any search;
* ``uniform L1 (plain pruning)`` — the same uniform widths, channels kept by L1 magnitude, no supernet: what
  a user does without ganprune.

Within a (budget, seed) the supernet is trained once and shared by the methods that use it (its settings do not
depend on the agent). Prints mean ± std over seeds as a Markdown table, with the teacher's own quality.

    python benchmarks/bench_pipeline.py --quick     # 100 fine-tuning steps, no FID (the docs/benchmarks.md table)
    python benchmarks/bench_pipeline.py             # 600 fine-tuning steps, FID/KID on the val split

Every run is a resumable ``run_pipeline`` output folder under ``--out``: a rerun (e.g. with another
``--budgets`` list) skips what is finished and only prints the table again.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pandas as pd
import torch

from _common import parser, run_sharing_supernet
from bench_rank import teacher_dir

METHODS = {  # name: (run folder, G agent, D agent, rounds override, channel importance, supernet, finalists)
    "ganprune (greedy agents)": ("ganprune_greedy_f0", "greedy", "greedy", None, "l2", True, 0),
    "ganprune (RL agents)": ("ganprune_rl_f0", "rl", "rl", None, "l2", True, 0),
    "random search (supernet)": ("random_supernet_f0", "random", "random", None, "l2", True, 0),
    "ganprune (greedy agents), 4 finalists": ("ganprune_greedy", "greedy", "greedy", None, "l2", True, 4),
    "ganprune (RL agents), 4 finalists": ("ganprune_rl", "rl", "rl", None, "l2", True, 4),
    "random search (supernet), 4 finalists": ("random_supernet", "random", "random", None, "l2", True, 4),
    "uniform (supernet slice)": ("uniform_supernet", "template", "template", 1, "l2", True, 0),
    "uniform L1 (plain pruning)": ("uniform_l1", "template", "template", 1, "l1", False, 0),
}


def settings(quick: bool) -> dict:
    if quick:
        return dict(rounds=40, calib_images=16, finetune_steps=100, fid=False, eval_images=None, supernet_steps=300)
    return dict(rounds=60, calib_images=16, finetune_steps=600, fid=True, eval_images=None, supernet_steps=300)


def main():
    ap = parser(__doc__, "bench_pipeline")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budgets", default="0.25,0.10", help="G MACs budgets, comma-separated (default 0.25,0.10)")
    ap.add_argument("--methods", help="run folders of the methods to run, comma-separated (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    s = settings(args.quick)
    data, tdir = teacher_dir(os.environ.get("GANPRUNE_RANK_CACHE", os.path.join(args.out, "rank")), 3000)

    rows = []
    for budget in (float(b) for b in args.budgets.split(",")):
        for seed in range(args.seeds):
            # one supernet per (budget, seed), reused by every method that has one (a finished one from a run before)
            shared = next((f for f in (os.path.join(args.out, f"b{int(budget * 100)}", m[0], f"seed{seed}", "search",
                                                    "supernet") for m in METHODS.values() if m[5])
                           if os.path.isfile(os.path.join(f, "supernet_G.pt"))), None)
            for method, (folder, g_agent, d_agent, rounds, importance, supernet, finalists) in METHODS.items():
                if args.methods and folder not in args.methods.split(","):
                    continue
                out = os.path.join(args.out, f"b{int(budget * 100)}", folder, f"seed{seed}")
                config = {"teacher": tdir, "dataroot": data, "g_budget": budget, "d_budget": 0.5, "g_agent": g_agent,
                          "d_agent": d_agent, "importance": importance, "fill": True, "recipe": "density",
                          "latency": True, "seed": seed, **s, "rounds": rounds or s["rounds"],
                          "supernet_steps": s["supernet_steps"] if supernet else 0, "finalists": finalists}
                result, shared, wall = run_sharing_supernet(config, out, shared, supernet)   # one supernet per (budget, seed)
                table = result["table"].set_index("model")
                final, dense = table.loc["pruned + fine-tuned"], table.loc["teacher"]
                rows.append({"G budget": f"{budget:.0%}", "method": method, "seed": seed,
                             "G MACs %": 100 * final["GMACs"] / dense["GMACs"], "G params M": final["params (M)"],
                             "PSNR": final["PSNR"], "PSNR vs teacher": final["PSNR vs teacher"],
                             "FID": final.get("FID", float("nan")), "KID": final.get("KID", float("nan")),
                             "ORT speedup ×": dense["ms onnxruntime"] / final["ms onnxruntime"],
                             "PSNR before fine-tuning (vs teacher)": table.loc["pruned, before fine-tuning",
                                                                               "PSNR vs teacher"],
                             "teacher PSNR": dense["PSNR"],
                             "wall s": wall})
                print(f"  {method:28s} {budget:.0%} seed {seed}: PSNR {final['PSNR']:.2f}  "
                      f"vs teacher {final['PSNR vs teacher']:.2f}", flush=True)
    raw = pd.DataFrame(rows)
    raw.to_csv(os.path.join(args.out, "bench_pipeline_runs.csv"), index=False)
    metrics = [c for c in ("G MACs %", "G params M", "PSNR", "PSNR before fine-tuning (vs teacher)", "PSNR vs teacher",
                           "FID", "KID", "ORT speedup ×", "wall s")
               if raw[c].notna().any()]
    grouped = raw.groupby(["G budget", "method"], sort=False)[metrics]
    mean, std = grouped.mean(), grouped.std()
    summary = mean.copy().astype(object)
    for col in metrics:
        summary[col] = [f"{m:.3g} ± {sd:.2g}" for m, sd in zip(mean[col], std[col])]
    on = "val split" if s["eval_images"] is None else f"first {s['eval_images']} val images"
    teacher = raw.iloc[0]
    print(f"\nteacher {tdir}: PSNR {teacher['teacher PSNR']:.2f} dB to ground truth on the val split; {args.seeds} seeds; fine-tune: density recipe, {s['finetune_steps']} "
          f"steps; search: {s['rounds']} candidates on {s['calib_images']} train images; evaluation: {on}"
          f"{', FID/KID on' if s['fid'] else ', no FID (--quick)'}; PSNR per-image mean on [0,1]; "
          f"latency batch 1, {args.threads} threads\n")
    print(summary.reset_index().to_markdown(index=False))


if __name__ == "__main__":
    main()
