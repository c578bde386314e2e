"""Our collaborative agents as an NNI tuner vs NNI's own tuners, at equal trial budgets, in real local
NNI experiments.

Task: the embedded 64² demo (``--task``, default the project's demo task), teacher from
``ganprune.train.teacher.demo_teacher(quick=True)`` (unet_64 ngf 8 and a basic PatchGAN ndf 8, 200 training
steps; built once and cached in the output folder). Every
tuner gets the same trials, the same search config (G budget 30 %, D budget 50 % of dense MACs) and
one trial at a time. NNI's tuners minimise the trial's ``default`` (the score, penalised when over
budget); the table compares the best *feasible* score (lower is better; inf: no trial within both
budgets yet) after k trials, the best penalised ``default`` over all trials (what NNI's tuners see), the
smallest G tried (% of dense MACs), and wall time.

    python benchmarks/bench_nni.py --quick        # 8 trials per tuner
    python benchmarks/bench_nni.py --trials 30 --out /tmp/bench_nni

Writes ``bench_nni.csv`` (one row per tuner) and ``bench_nni.md`` into ``--out``; each experiment's
history.csv is kept in ``<out>/<tuner>/``.
"""
from __future__ import annotations

import argparse
import math
import os
import time

import pandas as pd
import yaml

from ganprune.nni.experiment import free_port, run_experiment
from ganprune.nni.space import Setup, load_options
from ganprune.nni.trial import penalised

TUNERS = [("ours greedy", "ours", "greedy"), ("ours rl", "ours", "rl"), ("ours random", "ours", "random"),
          ("NNI TPE", "TPE", None), ("NNI Random", "Random", None)]


def best_so_far(history: pd.DataFrame, k: int) -> float:
    """Best feasible score among the first ``k`` trials (inf when none is feasible yet)."""
    h = history.sort_values("round").head(k)
    ok = h[(h["error"].fillna("") == "") & (h["feasible"].astype(str) == "True")]
    return float(ok["score"].min()) if len(ok) else math.inf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 trials per tuner")
    ap.add_argument("--trials", type=int, default=None, help="trials per tuner (default 24; 8 with --quick)")
    ap.add_argument("--out", default=os.path.join(os.getcwd(), "bench_nni_out"))
    ap.add_argument("--only", nargs="*", help="run only these table rows (e.g. 'NNI TPE')")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--task", default=None, help="demo task (default: the project's demo default)")
    a = ap.parse_args()
    trials = a.trials or (8 if a.quick else 24)
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)

    from ganprune.train.teacher import demo_teacher
    t0 = time.perf_counter()
    demo = demo_teacher(os.path.join(out, "demo"), quick=True, progress=False,
                        **({"task": a.task} if a.task else {}))
    print(f"demo teacher ready in {time.perf_counter() - t0:.1f} s -> {demo['out']}")
    config = os.path.join(out, "search.yaml")
    with open(config, "w", encoding="utf-8") as fh:
        yaml.safe_dump({"teacher": str(demo["out"]), "dataroot": str(demo["dataroot"]), "calib-images": 4,
                        "calib-batch": 4, "m": 4, "g-budget": 0.3, "d-budget": 0.5, "seed": a.seed}, fh)

    setup = Setup(load_options(config), calib_images=1)     # budgets, for the penalised 'default'
    rows = []
    marks = sorted({max(1, trials // 4), max(1, trials // 2), trials})
    for label, tuner, agent in TUNERS:
        if a.only and label not in a.only:
            continue
        args = load_options(config)
        if agent:
            args.g_agent = args.d_agent = agent
        start = time.perf_counter()
        r = run_experiment(args, os.path.join(out, label.replace(" ", "_")), tuner=tuner, trials=trials,
                           port=free_port(), timeout=600 + 120 * trials)
        h = r.history
        row = {"tuner": label, "trials": len(h), "feasible": int((h["feasible"].astype(str) == "True").sum()),
               "failed": int((h["error"].fillna("") != "").sum())}
        row |= {f"best@{k}": best_so_far(h, k) for k in marks}
        ok = h[h["error"].fillna("") == ""]
        row["best default"] = min((penalised(r.score, r.g_macs, r.d_macs, setup.g_budget, setup.d_budget,
                                             args.infeasible_penalty) for r in ok.itertuples()), default=math.inf)
        row["min G MACs %"] = round(100 * ok["g_macs"].min() / setup.g_space.macs(setup.g_space.full_widths()), 1)
        row |= {"wall s": round(time.perf_counter() - start, 1), "startup s": round(r.timings["startup_s"], 1),
                "median trial s": round(r.timings.get("trial_wall_s", math.nan), 1)}
        rows.append(row)
        print(pd.DataFrame([row]).to_markdown(index=False, floatfmt=".4g"), flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(os.path.join(out, "bench_nni.csv"), index=False)
    md = table.to_markdown(index=False, floatfmt=".4g")
    with open(os.path.join(out, "bench_nni.md"), "w", encoding="utf-8") as fh:
        fh.write(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
