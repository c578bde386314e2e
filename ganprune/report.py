"""The pipeline's last stage: metrics.csv / metrics.md from the evaluation, pareto.png of the search and
grid.png, the pictures (``image_grid``, also written by ``ganprune eval``)."""
from __future__ import annotations

import os
from typing import Callable, Mapping

from ganprune.core.errors import UserError

BEFORE, AFTER = "pruned, before fine-tuning", "pruned + fine-tuned"
TEACHER_PSNR = "PSNR vs teacher"
# The PSNRs that judge what ships (``finetune/choice.yaml`` keys, ``pipeline.judged_by``): who they compare with,
# and their column in the evaluation table.
JUDGE_MEASURES = {"psnr_vs_teacher": ("teacher", TEACHER_PSNR),
                  "psnr_vs_ground_truth": ("ground truth", "PSNR")}
GRID_ROWS = 4      # held-out images shown in grid.png (the same ones every run: spread evenly over the split)
GRID_TILE = (128, 256)   # images are shown with their longer side in this range (small ones enlarged)


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
             "finetune/D.pt = after fine-tuning; G.onnx = the G that ships, below, exported (BN folded; its "
             "metadata_props name the file, widths and threads)\n")
    choice = read_yaml(os.path.join(out, "finetune", "choice.yaml"), "choice file")
    by = choice.get("judged_by", "psnr_vs_teacher")   # older runs judged by the teacher alone
    who = JUDGE_MEASURES[by][0]
    which = "the fine-tuned G" if choice["ships"] == "finetune/G.pt" else \
        f"the pruned G before fine-tuning: fine-tuning did not bring G closer to the {who}"
    measured = "; ".join(f"vs {ref} {choice[k]['pruned_G.pt']:.2f} -> {choice[k]['finetune/G.pt']:.2f} dB"
                         for k, (ref, _) in JUDGE_MEASURES.items() if choice.get(k))
    ships = (f"Ships: {choice['ships']} ({which}), judged by PSNR vs {who} (what the recipe trains for) on "
             f"{choice['judged_on']}; before -> after fine-tuning: {measured}. G.onnx is that file exported.")
    text += f"\n{ships}\n"
    log(f"report: {ships}")
    worse = finetune_made_worse(table, by) if choice["ships"] == "finetune/G.pt" else None
    if worse:
        text += f"\n**Warning: {worse}**\n"
        log(f"report: warning: {worse}")
    grid = os.path.join(out, "grid.png")
    models = {"teacher": None, "pruned": os.path.join(out, "pruned_G.pt"),
              "pruned + fine-tuned": os.path.join(out, "finetune", "G.pt")}
    pipeline_grid(config, models, grid)
    text += (f"\nPictures: grid.png (input, teacher, pruned before fine-tuning, pruned + fine-tuned; "
             f"{GRID_ROWS} held-out images)\n")
    log(f"report: pictures -> {grid}")
    atomic_write_text(os.path.join(out, "metrics.md"), text)
    return {"pareto_png": pareto_png(os.path.join(out, "history.csv"), winner, os.path.join(out, "pareto.png"), log),
            "finetune_worse": bool(worse), "g_only": g_only, "ships": choice["ships"], "grid": grid}


def pipeline_grid(config: Mapping, files: Mapping, path) -> None:
    """grid.png of a pipeline run: the teacher (``None`` in ``files``) and the pruned-model files, on the
    evaluation's split."""
    from ganprune.data.datasets import held_out_phase
    from ganprune.pruning.physical import load_pruned
    from ganprune.train.pair import pair_from_options
    c = config
    teacher = pair_from_options(c)[0]
    nets = {name: teacher if f is None else load_pruned(f) for name, f in files.items()}
    image_grid(nets, c["dataroot"], path, phase=held_out_phase(c["dataroot"], c["mode"]), mode=c["mode"],
               direction=c["direction"], size=c["size"])


def grid_indices(n: int, rows: int = GRID_ROWS) -> list[int]:
    """``rows`` items spread evenly over a split of ``n`` (all of them when fewer): fixed for a split."""
    rows = min(rows, n)
    return [(2 * i + 1) * n // (2 * rows) for i in range(rows)]


def image_grid(models: Mapping, dataroot, path, phase: str = "val", mode: str = "aligned", direction: str = "AtoB",
               size: int | None = None, rows: int = GRID_ROWS) -> dict:
    """A PNG at ``path``: one row per held-out image (``grid_indices``), its input then each of ``models``'
    outputs (name → generator, in order), a header naming the columns. Returns ``{"path", "rows", "columns"}``."""
    import torch
    from PIL import Image, ImageDraw

    from ganprune.core.io import atomic_path
    from ganprune.data.datasets import build_dataset
    from ganprune.evaluation import _channels
    in_nc, out_nc = _channels(next(iter(models.values())))
    data = build_dataset(dataroot, mode=mode, phase=phase, direction=direction, load_size=size, crop_size=size,
                         flip=False, input_nc=in_nc, output_nc=out_nc)
    picked = grid_indices(len(data), rows)
    if not picked:
        raise UserError(f"{os.path.join(os.fspath(dataroot), phase)}: no images to show")
    x = torch.stack([data[i]["A"] for i in picked])
    columns = {"input": x}
    with torch.inference_mode():
        for name, net in models.items():
            device = next(net.parameters()).device
            was_training = net.training
            net.eval()
            columns[name] = net(x.to(device)).float().cpu()
            net.train(was_training)
    h, w = x.shape[-2:]
    scale = min(max(1.0, GRID_TILE[0] / max(h, w)), GRID_TILE[1] / max(h, w))
    th, tw = max(1, round(h * scale)), max(1, round(w * scale))
    header = 14
    sheet = Image.new("RGB", (tw * len(columns), header + th * len(picked)), "white")
    draw = ImageDraw.Draw(sheet)
    for j, (name, images) in enumerate(columns.items()):
        draw.text((j * tw + 2, 1), name[: max(4, tw // 6)], fill="black")
        for i, img in enumerate(images):
            sheet.paste(_to_pil(img).resize((tw, th), Image.NEAREST if scale > 1 else Image.BILINEAR),
                        (j * tw, header + i * th))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG", optimize=True)
    return {"path": os.fspath(path), "rows": len(picked), "columns": list(columns)}


def _to_pil(img):
    """A C×H×W tensor in [-1, 1] as an 8-bit RGB image (1 channel: gray; more than 3: the first three)."""
    from PIL import Image
    img = img.clamp(-1, 1).add(1).mul(127.5).round().byte()
    img = img.expand(3, *img.shape[1:]) if img.shape[0] == 1 else img[:3]
    return Image.fromarray(img.permute(1, 2, 0).numpy(), "RGB")


def finetune_made_worse(table, judged_by: str = "psnr_vs_teacher") -> str | None:
    """One line when fine-tuning ended worse than it started on the evaluation split by the PSNR that chose what
    ships (``judged_by``: ``pipeline.judged_by``); said only when the fine-tuned G ships anyway."""
    rows = table.set_index("model") if "model" in table.columns else table
    column = JUDGE_MEASURES[judged_by][1]
    if column not in rows.columns or not {BEFORE, AFTER} <= set(rows.index):
        return None
    before, after = float(rows.loc[BEFORE, column]), float(rows.loc[AFTER, column])
    if not after < before:
        return None
    return (f"fine-tuning made G worse on the evaluation split: {column} {before:.2f} -> {after:.2f} dB, though it "
            "was not worse on the held-out training images that chose what ships; try more steps, a lower lr or "
            "another recipe")


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
