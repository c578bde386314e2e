"""The discriminator's half of the method, measured: one fixed G, fine-tuned identically beside five D variants.

ganprune prunes D with G, by two agents that see each other's latest result, and scores G with a G/D balance
term; the claim is that this keeps training balanced and ends better than pruning G alone. Here G is held fixed —
the G of the greedy pair search at the G budget, started from the same supernet slice — and only D changes:

* ``pair (peer feedback)`` — the D of the pair search (greedy G and D agents that exchange feedback);
* ``no peer feedback`` — the D of a search whose agents each see only their own results (the same greedy agents,
  handed no peer), G fixed as above;
* ``balance_weight 0`` — the D of the same pair search without the G/D balance term in the G score;
* ``uniform D`` — every D group at the same fraction, at the pair's D MACs;
* ``full teacher D`` — no D pruning (a trainable copy of the teacher's D);
* ``fresh D`` — a new D trained from scratch (what generator-only runs do).

Every variant is one resumable ``run_pipeline`` run with the same seed, fine-tune (density recipe) and
evaluation on the held-out split; the supernet of a (budget, seed) is trained once and copied into every run.
Measured: G quality after fine-tuning (PSNR to ground truth and to the teacher, KID without --quick), stability
(seed-to-seed spread, runs that end worse than they started, D's real/fake loss gap over training) and cost
(fine-tuning seconds per step). Loss curves of every variant go to ``discriminator_curves.png``.

    python benchmarks/bench_discriminator.py --quick    # 25% G MACs, 2 seeds, 100 steps, no KID
    python benchmarks/bench_discriminator.py            # 25% and 10% G MACs, 3 seeds, 600 steps, KID

Tables: ``bench_discriminator_runs.csv`` (every run) and the printed Markdown summary (mean ± std over seeds).
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pandas as pd
import torch
import yaml

from _common import run_sharing_supernet
from bench_frontier import teacher_spaces
from bench_rank import TEACHER, teacher_dir
from ganprune.core.io import atomic_write_yaml
from ganprune.pipeline import run_pipeline

# An agent that never looks at its peer: the same greedy agent, handed no peer feedback. It is registered
# from this file through the plugin mechanism (``agent_file``), as a user's own agent would be.
NO_PEER_AGENT = '''
from ganprune.agents.greedy import GreedyAgent
from ganprune.search.agent import register_agent


@register_agent("greedy_no_peer")
class GreedyNoPeer(GreedyAgent):
    """Greedy, blind to the other network's results."""

    def ask(self, peer):
        return super().ask(None)
'''

VARIANTS = ["pair (peer feedback)", "no peer feedback", "balance_weight 0", "uniform D", "full teacher D", "fresh D"]


def settings(quick: bool) -> dict:
    if quick:
        return dict(rounds=30, calib_images=16, finetune_steps=100, fid=False, eval_images=None, supernet_steps=300)
    return dict(rounds=60, calib_images=16, finetune_steps=600, fid=True, eval_images=None, supernet_steps=300)


def _folder(variant: str) -> str:
    return variant.replace(" ", "_").replace("(", "").replace(")", "")


def _widths(path: str) -> tuple[dict, dict]:
    with open(path, encoding="utf-8") as fh:
        w = yaml.safe_load(fh)
    return dict(w["generator"]["widths"]), dict(w["discriminator"]["widths"] or {})


def _log_stats(out: str, steps: int) -> dict:
    """D's real/fake loss gap over the second half of fine-tuning, and its final value."""
    log = pd.read_csv(os.path.join(out, "finetune", "log.csv"))
    log = log[log["step"] > 0] if "step" in log else log
    late = log[log["step"] > steps // 2] if "step" in log else log.tail(len(log) // 2)
    if not {"D_real", "D_fake"} <= set(log.columns):
        return {"D real-fake gap": float("nan"), "D fake loss (end)": float("nan")}
    gap = (late["D_fake"] - late["D_real"]).abs()
    return {"D real-fake gap": float(gap.mean()), "D fake loss (end)": float(late["D_fake"].tail(5).mean())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="runs/bench_discriminator")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per budget (default 3; --quick 2)")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds run from this one on (to add seeds later)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budgets", default=None, help="G MACs budgets, comma-separated (default 0.25,0.10; --quick 0.25)")
    ap.add_argument("--teacher-steps", type=int, default=TEACHER["steps"])
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default 600; --quick 100)")
    ap.add_argument("--kid", action="store_true", help="KID to ground truth also with --quick")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: the table from the (budget, seed) groups whose six runs finished in --out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    s = settings(args.quick)
    if args.steps is not None:
        s["finetune_steps"] = args.steps
    s["fid"] = s["fid"] or args.kid
    seeds = args.seeds or (2 if args.quick else 3)
    budgets = [float(b) for b in (args.budgets or ("0.25" if args.quick else "0.25,0.10")).split(",")]
    data, tdir = teacher_dir(os.environ.get("GANPRUNE_RANK_CACHE", os.path.join(args.out, "rank")), args.teacher_steps)
    os.makedirs(args.out, exist_ok=True)
    agent_file = os.path.join(args.out, "greedy_no_peer.py")
    with open(agent_file, "w", encoding="utf-8") as fh:
        fh.write(NO_PEER_AGENT)
    # the method's claim is about agents that search D with G: the pair runs the greedy agents (the default
    # agents, ``template``, take the uniform slice and would make the pair the same as ``uniform D``)
    base = {"teacher": tdir, "dataroot": data, "d_budget": 0.5, "recipe": "density", "latency": False,
            "g_agent": "greedy", "d_agent": "greedy", **s}
    rows, curves = [], {}
    for budget in budgets:
        d_space = teacher_spaces(tdir, data)[1]
        for seed in range(args.first_seed, args.first_seed + seeds):
            root = os.path.join(args.out, f"b{int(budget * 100)}", f"seed{seed}")
            cfg = dict(base, g_budget=budget, seed=seed)
            if args.report_only and not all(os.path.exists(os.path.join(root, _folder(name), "metrics.csv"))
                                            for name in VARIANTS):
                continue

            def run(name, config, widths=None):
                out = os.path.join(root, _folder(name))
                shared = None
                if widths is not None:   # the pair's supernet copied in: the same G start
                    path = os.path.join(root, f"widths_{os.path.basename(out)}.yaml")
                    atomic_write_yaml(path, {"generator": {"widths": widths[0]},
                                             "discriminator": {"widths": widths[1]}})
                    config = dict(config, widths=path, d_budget=1.0)   # given D widths: any D size may be adopted
                    shared = os.path.join(root, "pair_peer_feedback", "search", "supernet")
                result, _, seconds = run_sharing_supernet(config, out, shared, True)
                return out, result, seconds

            # the default pair: its G is the fixed G of every variant
            pair_out, pair_result, pair_s = run("pair (peer feedback)", cfg)
            g_fixed, d_pair = _widths(os.path.join(pair_out, "widths.yaml"))
            searches = {
                "no peer feedback": dict(cfg, g_agent="greedy_no_peer", d_agent="greedy_no_peer", agent_file=agent_file),
                "balance_weight 0": dict(cfg, balance_weight=0.0),
            }
            d_macs = d_space.macs(d_pair)
            from ganprune.search.budget import uniform_widths
            d_widths = {"uniform D": uniform_widths(d_space, d_macs), "full teacher D": d_space.full_widths()}
            for name, scfg in searches.items():   # their search stage only: the D it picks
                sout = os.path.join(root, "search_" + name.replace(" ", "_"))
                run_pipeline(scfg, sout, stages=["search"], progress=False)
                d_widths[name] = _widths(os.path.join(sout, "widths.yaml"))[1]
            results = {"pair (peer feedback)": (pair_out, pair_result, pair_s, d_pair)}
            for name in ("no peer feedback", "balance_weight 0", "uniform D", "full teacher D"):
                out, result, sec = run(name, cfg, (g_fixed, d_widths[name]))
                results[name] = (out, result, sec, d_widths[name])
            gonly = {k: v for k, v in cfg.items() if k != "teacher"}
            gonly.update(generator=os.path.join(tdir, "latest_net_G.pth"), g_arch=TEACHER["arch"], ngf=TEACHER["ngf"],
                         ndf=TEACHER["ndf"])
            out, result, sec = run("fresh D", gonly, (g_fixed, {}))
            results["fresh D"] = (out, result, sec, d_space.full_widths())   # a new D at the teacher's widths
            full_d = d_space.macs(d_space.full_widths())
            for name in VARIANTS:
                out, result, sec, dw = results[name]
                table = result["table"].set_index("model")
                final, before = table.loc["pruned + fine-tuned"], table.loc["pruned, before fine-tuning"]
                with open(os.path.join(out, ".done", "finetune"), encoding="utf-8") as fh:
                    finetune_seconds = float(yaml.safe_load(fh)["seconds"])
                row = {"G budget": f"{budget:.0%}", "D": name, "seed": seed,
                       "D MACs %": 100 * d_space.macs(dw) / full_d,
                       "same D as the pair": int(dict(dw) == dict(d_pair) and name != "fresh D"),
                       "PSNR": final["PSNR"], "PSNR vs teacher": final["PSNR vs teacher"],
                       "gain vs start (dB, vs teacher)": final["PSNR vs teacher"] - before["PSNR vs teacher"],
                       "KID": final.get("KID", float("nan")),
                       "s/step": finetune_seconds / max(1, s["finetune_steps"]),
                       "wall s": sec, **_log_stats(out, s["finetune_steps"])}
                row["ended worse"] = int(row["gain vs start (dB, vs teacher)"] < 0)
                rows.append(row)
                curves.setdefault((f"{budget:.0%}", name), []).append(os.path.join(out, "finetune", "log.csv"))
                print(f"  {budget:.0%} seed {seed} {name:22s}: PSNR {final['PSNR']:.2f}  vs teacher "
                      f"{final['PSNR vs teacher']:.2f}  (start {before['PSNR vs teacher']:.2f})", flush=True)
    raw = pd.DataFrame(rows)
    raw.to_csv(os.path.join(args.out, "bench_discriminator_runs.csv"), index=False)
    metrics = [c for c in ("D MACs %", "PSNR", "PSNR vs teacher", "gain vs start (dB, vs teacher)", "KID",
                           "D real-fake gap", "D fake loss (end)", "s/step") if raw[c].notna().any()]
    grouped = raw.groupby(["G budget", "D"], sort=False)
    mean, std = grouped[metrics].mean(), grouped[metrics].std()
    summary = mean.copy().astype(object)
    for col in metrics:
        summary[col] = [f"{m:.3g} ± {sd:.2g}" for m, sd in zip(mean[col], std[col])]
    summary["same D as the pair"] = grouped["same D as the pair"].sum().astype(str) + "/" + \
        grouped["same D as the pair"].count().astype(str)
    summary["seeds"] = grouped["seed"].count()
    # G is the same in every variant of a (budget, seed): differences to the pair's run of that seed are paired
    for col, label in (("PSNR vs teacher", "Δ vs pair (dB to teacher)"), ("KID", "Δ KID vs pair")):
        if not raw[col].notna().any():
            continue
        pair = raw[raw["D"] == VARIANTS[0]].set_index(["G budget", "seed"])[col]
        delta = raw[col] - pd.Series([pair.get((b, sd), float("nan")) for b, sd in zip(raw["G budget"], raw["seed"])],
                                     index=raw.index)
        d = delta.groupby([raw["G budget"], raw["D"]], sort=False)
        summary[label] = [f"{m:+.3g} ± {sd:.2g}" for m, sd in zip(d.mean(), d.std())]
    summary["ended worse"] = grouped["ended worse"].sum().astype(str) + "/" + grouped["ended worse"].count().astype(str)
    print(f"\nteacher {tdir}; up to {seeds} seeds (column seeds); fine-tune: density recipe, {s['finetune_steps']} steps; evaluation: "
          f"val split, PSNR per-image mean on [0,1]{', KID' if s['fid'] else ''}; D budget of the searches 50%\n")
    print(summary.reset_index().to_markdown(index=False))
    _plot(curves, os.path.join(args.out, "discriminator_curves.png"))


def _plot(curves: dict, path: str) -> None:
    """G's adversarial loss and D's real/fake losses over fine-tuning, mean over seeds, one panel per budget."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no plot; pip install 'ganprune[plot]')")
        return
    budgets = sorted({b for b, _ in curves})
    fig, axes = plt.subplots(2, len(budgets), figsize=(6 * len(budgets), 7), squeeze=False)
    for j, budget in enumerate(budgets):
        for (b, name), files in curves.items():
            if b != budget:
                continue
            logs = [pd.read_csv(f) for f in files if os.path.exists(f)]
            if not logs or "D_fake" not in logs[0]:
                continue
            frame = pd.concat(logs).groupby("step").mean(numeric_only=True)
            frame = frame[frame.index > 0].rolling(10, min_periods=1).mean()
            axes[0][j].plot(frame.index, frame["D_fake"] - frame["D_real"], label=name)
            if "G_adv" in frame:
                axes[1][j].plot(frame.index, frame["G_adv"], label=name)
        axes[0][j].set_title(f"G at {budget} MACs: D fake − real loss")
        axes[1][j].set_title("G adversarial loss")
        axes[1][j].set_xlabel("fine-tuning step")
        axes[0][j].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
