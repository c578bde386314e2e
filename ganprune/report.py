"""The pipeline's last stage: metrics.csv / metrics.md from the evaluation, and pareto.png of the search."""
from __future__ import annotations

import os
from typing import Callable, Mapping

BEFORE, AFTER = "pruned, before fine-tuning", "pruned + fine-tuned"
TEACHER_PSNR = "PSNR vs teacher"


def write_run_report(out, config: Mapping, log: Callable[[str], None]) -> dict:
    """metrics.csv and metrics.md (evaluation table + search winner + fine-tuning settings) and pareto.png
    in the pipeline folder ``out``; ``config`` is the run's resolved config."""
    import pandas as pd

    from ganprune.evaluation import report_markdown
    from ganprune.core.io import atomic_write_text
    from ganprune.core.options import read_yaml
    from ganprune.search.loop import load_winner
    out = os.fspath(out)
    table = pd.read_csv(os.path.join(out, "evaluate", "eval.csv"))
    computed_on = read_yaml(os.path.join(out, "evaluate", "computed_on.yaml"))
    winner = load_winner(os.path.join(out, "search", "widths.yaml"))   # checked: a hand-edited file is one line
    atomic_write_text(os.path.join(out, "metrics.csv"), table.to_csv(index=False))
    text = report_markdown(table, computed_on)
    g_only = not winner["discriminator"]["widths"]
    d_text = ("G only (no discriminator checkpoint: D was built fresh and trained from scratch while "
              "fine-tuning; the search scored G alone)" if g_only else f"D {winner['discriminator']['macs']:,} MACs")
    text += (f"\nSearch winner: round {winner['round']}, score {winner['score']:.4g}, G {winner['generator']['macs']:,}"
             f" MACs, {d_text} (widths.yaml); fine-tuned with recipe "
             f"{config['recipe']} for {config['finetune_steps']} steps.\nFiles: pruned_G.pt / pruned_D.pt = the pruned "
             "pair before fine-tuning" + (" (pruned_D.pt: the fresh D)" if g_only else "") + "; finetune/G.pt / "
             "finetune/D.pt = after fine-tuning (what ships); G.onnx = finetune/G.pt exported (BN folded; its "
             "metadata_props name the stage, widths and threads)\n")
    worse = finetune_made_worse(table)
    if worse:
        text += f"\n**Warning: {worse}**\n"
        log(f"report: warning: {worse}")
    atomic_write_text(os.path.join(out, "metrics.md"), text)
    return {"pareto_png": pareto_png(os.path.join(out, "history.csv"), winner, os.path.join(out, "pareto.png"), log),
            "finetune_worse": bool(worse), "g_only": g_only}


def finetune_made_worse(table) -> str | None:
    """One line when fine-tuning ended further from the teacher than it started (PSNR vs teacher fell)."""
    rows = table.set_index("model") if "model" in table.columns else table
    if TEACHER_PSNR not in rows.columns or not {BEFORE, AFTER} <= set(rows.index):
        return None
    before, after = float(rows.loc[BEFORE, TEACHER_PSNR]), float(rows.loc[AFTER, TEACHER_PSNR])
    if not after < before:
        return None
    return (f"fine-tuning made G worse: PSNR vs teacher {before:.2f} -> {after:.2f} dB (pruned_G.pt, before "
            "fine-tuning, is the closer one; try more steps, a lower lr or another recipe)")


def pareto_png(history_csv, winner: Mapping, path, log: Callable[[str], None]) -> bool:
    """Two panels: G MACs vs score_g and D MACs vs score_d of every searched candidate, each with its
    Pareto front, budget line and the winner (False: no matplotlib)."""
    import pandas as pd
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("report: matplotlib is not installed; skipped pareto.png (pip install matplotlib)")
        return False
    from ganprune.core.io import atomic_path
    h = pd.read_csv(history_csv)
    h = h[h["error"].isna() | (h["error"] == "")]
    row = h[h["round"] == winner["round"]].iloc[0]
    budget = winner.get("budget") or {}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for ax, net, name in zip(axes, ("g", "d"), ("generator", "discriminator")):
        if net == "d" and not winner["discriminator"]["widths"]:
            ax.text(0.5, 0.5, "G-only search:\nno discriminator checkpoint,\nD not searched", ha="center",
                    va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        _panel(ax, h, row, net, (budget.get(name) or {}), winner["round"])
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True


def _panel(ax, h, row, net: str, budget: Mapping, winner_round) -> None:
    from ganprune.search.loop import pareto_front
    macs, score = f"{net}_macs", f"score_{net}"
    ok = h["feasible"].astype(str) == "True"
    front = pareto_front(h, macs, score)
    ax.scatter(h.loc[ok, macs] / 1e6, h.loc[ok, score], s=14, label="within both budgets")
    ax.scatter(h.loc[~ok, macs] / 1e6, h.loc[~ok, score], s=14, marker="x", label="over a budget")
    ax.plot(front[macs] / 1e6, front[score], drawstyle="steps-post", lw=1, label="Pareto front")
    if budget.get("unit") == "MACs":
        ax.axvline(budget["limit"] / 1e6, color="grey", ls="--", lw=1, label="budget")
    ax.scatter([row[macs] / 1e6], [row[score]], s=160, marker="*", c="red", zorder=3,
               label=f"winner (round {winner_round})")
    ax.set_xlabel(f"{net.upper()} MMACs")
    ax.set_ylabel(f"{score} (lower is better)")
    ax.legend(fontsize=7)
