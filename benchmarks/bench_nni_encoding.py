"""NNI's TPE on the width search: widths as unordered ``choice`` vs ordinal positions (``quniform`` index).

The same NNI 3.0 ``TpeTuner`` NNI's dispatcher would run is driven in this process (generate_parameters →
the trial's own scoring, ``ganprune.nni.trial.score_candidate`` → receive_trial_result with the trial's
``default``), one trial at a time, so many seeds fit in minutes: an NNI experiment adds only process
start-up per trial. Candidates are deterministic (the search's per-candidate seed), so scores are cached
across arms. For each arm and seed: the best feasible score after N/2 and N trials (lower is better) and
the fraction of trials within budget, with the trial's ``repair`` on (NNI runs' default: over-budget
candidates are shrunk into the budget) and off (the tuner must learn the budget from the penalty).

    python benchmarks/bench_nni_encoding.py --teacher TEACHER_DIR --dataroot DATA --trials 40 --seeds 0 1 2
    python benchmarks/bench_nni_encoding.py --quick     # builds the quick demo teacher (unet_64, ngf 8)

NNI's TPE draws its first 20 trials at random (``n_startup_jobs``); only later trials use the model, and
so the encoding (``--startup`` changes that).

Prints one markdown table; ``--out FILE.csv`` keeps the per-seed rows.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pandas as pd  # noqa: E402


def run_arm(setup, evaluator, tuner_name: str, encoding: str, seed: int, trials: int, cache: dict,
            startup: int | None = None) -> list[dict]:
    """One tuner run: per trial, the scored result (feasible, score) in order."""
    from ganprune.nni.space import from_params, search_space
    from ganprune.nni.trial import score_candidate
    if tuner_name == "TPE":
        from nni.algorithms.hpo.tpe_tuner import TpeTuner
        tuner = TpeTuner(optimize_mode="minimize", seed=seed,
                         **({"tpe_args": {"n_startup_jobs": startup}} if startup else {}))
    else:
        from nni.algorithms.hpo.random_tuner import RandomTuner
        tuner = RandomTuner(seed=seed)
    tuner.update_search_space(search_space(setup.g_space, setup.d_space, encoding))
    out = []
    for i in range(trials):
        params = tuner.generate_parameters(i)
        key = (json.dumps(from_params(params, setup.g_space, setup.d_space), sort_keys=True),
               setup.options["repair"])
        if key not in cache:
            cache[key] = score_candidate(setup, evaluator, params)
        result = cache[key]
        tuner.receive_trial_result(i, params, result["default"])
        out.append(result)
    return out


def summary(results: list[dict], k: int) -> float:
    ok = [r["score"] for r in results[:k] if r["feasible"]]
    return min(ok) if ok else math.inf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", help="teacher folder (latest_net_G.pth + teacher.yaml)")
    ap.add_argument("--dataroot", help="its dataset")
    ap.add_argument("--quick", action="store_true", help="build/reuse the quick demo teacher under --work")
    ap.add_argument("--work", default=os.path.join(os.getcwd(), "bench_nni_encoding_out"))
    ap.add_argument("--g-budget", default="0.25")
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--calib-images", type=int, default=4)
    ap.add_argument("--startup", type=int, default=None, help="TPE's random start-up trials (default NNI's, 20)")
    ap.add_argument("--no-random", action="store_true", help="skip the Random-tuner reference arm")
    ap.add_argument("--out", help="per-seed rows as CSV")
    a = ap.parse_args()
    import torch
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if a.quick:
        from ganprune.train.teacher import demo_teacher
        demo = demo_teacher(os.path.join(a.work, "demo"), quick=True, progress=False)
        a.teacher, a.dataroot = str(demo["out"]), str(demo["dataroot"])
    import yaml

    from ganprune.nni.space import Setup
    # G only (the teacher's G checkpoint, no D): the G widths are what the encodings differ on
    g = yaml.safe_load(open(os.path.join(a.teacher, "teacher.yaml")))["G"]
    setup = Setup({"generator": os.path.join(a.teacher, "latest_net_G.pth"), "g_arch": g["arch"], "ngf": g["ngf"],
                   "norm": g["norm"], "dropout": g["dropout"], "dataroot": a.dataroot, "calib_images": a.calib_images,
                   "calib_batch": a.calib_images, "m": a.calib_images, "g_budget": a.g_budget}, evaluator=True)
    evaluator = setup.evaluator
    dims = [len(g.choices) for g in setup.g_space.groups if len(g.choices) > 1]
    print(f"G: {len(dims)} searched groups, {sorted(dims)} choices each; D: "
          f"{'searched too' if setup.d_space is not None else 'none'}; budget {a.g_budget} of dense G MACs")
    cache, rows = {}, []
    start = time.perf_counter()
    for repair in (True, False):
        setup.options["repair"] = repair
        for arm in (("TPE", "choice"), ("TPE", "ordinal"), ("Random", "choice"))[:2 if a.no_random else 3]:
            for seed in a.seeds:
                res = run_arm(setup, evaluator, *arm, seed, a.trials, cache, a.startup)
                rows.append({"repair": repair, "tuner": arm[0], "encoding": arm[1], "seed": seed,
                             f"best@{a.trials // 2}": summary(res, a.trials // 2),
                             f"best@{a.trials}": summary(res, a.trials),
                             "feasible": sum(r["feasible"] for r in res) / len(res)})
                print(rows[-1], f"({len(cache)} distinct candidates, {time.perf_counter() - start:.0f} s)",
                      flush=True)
    df = pd.DataFrame(rows)
    if a.out:
        df.to_csv(a.out, index=False)
    table = df.groupby(["repair", "tuner", "encoding"], sort=False).agg(
        **{f"best@{a.trials // 2} mean": (f"best@{a.trials // 2}", "mean"),
           f"best@{a.trials} mean": (f"best@{a.trials}", "mean"),
           f"best@{a.trials} per seed": (f"best@{a.trials}", lambda s: " ".join(f"{v:.4g}" for v in s)),
           "feasible": ("feasible", "mean")}).reset_index()
    print(table.to_markdown(index=False, floatfmt=".4g"))
    print(f"{len(cache)} distinct candidates scored in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
