"""The pipeline's last stage: metrics.csv / metrics.md from the evaluation, and pareto.png of the search."""
from __future__ import annotations

import os
from typing import Callable, Mapping


def write_run_report(out, config: Mapping, log: Callable[[str], None]) -> dict:
    """metrics.csv and metrics.md (evaluation table + search winner + fine-tuning settings) and pareto.png
    in the pipeline folder ``out``; ``config`` is the run's resolved config."""
    import pandas as pd

    from ganprune.evaluation import report_markdown
    from ganprune.io import atomic_write_text
    from ganprune.options import read_yaml
    from ganprune.search import load_winner
    out = os.fspath(out)
    table = pd.read_csv(os.path.join(out, "evaluate", "eval.csv"))
    computed_on = read_yaml(os.path.join(out, "evaluate", "computed_on.yaml"))
    winner = load_winner(os.path.join(out, "search", "widths.yaml"))   # checked: a hand-edited file is one line
    atomic_write_text(os.path.join(out, "metrics.csv"), table.to_csv(index=False))
    text = report_markdown(table, computed_on)
    text += (f"\nSearch winner: round {winner['round']}, score {winner['score']:.4g}, G {winner['generator']['macs']:,}"
             f" MACs, D {winner['discriminator']['macs']:,} MACs (widths.yaml); fine-tuned with recipe "
             f"{config['recipe']} for {config['finetune_steps']} steps.\nFiles: pruned_G.pt / pruned_D.pt = the pruned "
             "pair before fine-tuning; finetune/G.pt / finetune/D.pt = after fine-tuning (what ships); G.onnx = "
             "finetune/G.pt exported (BN folded; its metadata_props name the stage, widths and threads)\n")
    atomic_write_text(os.path.join(out, "metrics.md"), text)
    return {"pareto_png": pareto_png(os.path.join(out, "history.csv"), winner, os.path.join(out, "pareto.png"), log)}


def pareto_png(history_csv, winner: Mapping, path, log: Callable[[str], None]) -> bool:
    """MACs vs score_g of every searched candidate, the Pareto front, and the winner (False: no matplotlib)."""
    import pandas as pd
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("report: matplotlib is not installed; skipped pareto.png (pip install matplotlib)")
        return False
    from ganprune.io import atomic_path
    from ganprune.search import pareto_front
    h = pd.read_csv(history_csv)
    h = h[h["error"].isna() | (h["error"] == "")]
    front = pareto_front(h)
    ok = h["feasible"].astype(str) == "True"
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.scatter(h.loc[ok, "g_macs"] / 1e6, h.loc[ok, "score_g"], s=14, label="within both budgets")
    ax.scatter(h.loc[~ok, "g_macs"] / 1e6, h.loc[~ok, "score_g"], s=14, marker="x", label="over a budget")
    ax.plot(front["g_macs"] / 1e6, front["score_g"], drawstyle="steps-post", lw=1, label="Pareto front")
    row = h[h["round"] == winner["round"]].iloc[0]
    ax.scatter([row["g_macs"] / 1e6], [row["score_g"]], s=160, marker="*", c="red", zorder=3,
               label=f"winner (round {winner['round']})")
    ax.set_xlabel("G MMACs")
    ax.set_ylabel("score_g (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True
