"""What the defaults cost on a real-size checkpoint: each stage's pace measured on a short run, times its default length.

A user with unet_256 (ngf 64) or resnet_9blocks at 256² wants to know, before starting, how long
``ganprune prune`` takes with its defaults. This runs the whole pipeline once per architecture with a few units of
each loop (supernet steps, search rounds, fine-tuning steps) on fresh-init reference networks and the demo photos
at 256² (uniform agents, so a 6-round search has a winner; a round costs the same with any agent: one
candidate pair scored), reads the supernet's and fine-tuning's forecast lines (their pace after the first,
warm-up unit) and the median seconds of a search round (``history.csv``), and multiplies each pace
by the default length: ``supernet_steps`` 300, 60 search rounds (the least an automatic round count gives; the
greedy agents may ask for more on a large space), ``finetune_steps`` 1,000. Evaluation is timed whole on the
val split without FID.

    python benchmarks/bench_realsize.py --quick      # unet_256 only
    python benchmarks/bench_realsize.py              # unet_256 and resnet_9blocks

The numbers depend on the machine and on what else runs on it: read them as the order of magnitude a user of
a 2-core CPU should expect.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pandas as pd
import torch
import yaml

from _common import parser
from ganprune.data.demo import make_demo
from ganprune.models.checkpoint import load_discriminator, load_generator, save_checkpoint
from ganprune.pipeline import run_pipeline

DEFAULT_UNITS = {"supernet": 300, "search": 60, "fine-tune": 1000}
PROBE = {"supernet_steps": 6, "rounds": 6, "finetune_steps": 6}
FORECAST = re.compile(r"^(?P<label>[\w -]+): (?P<total>\d+) (?P<unit>\w+)s, expected to take about .*?\((?P<pace>[\d.e+-]+) s/")


def _stage(label: str) -> str | None:
    label = label.lower()
    for key in ("supernet", "search", "fine-tune", "finetune"):
        if key in label:
            return "fine-tune" if key in ("fine-tune", "finetune") else key
    return None


def measure(arch: str, root: str, threads: int) -> dict:
    data = make_demo(os.path.join(root, "data_256"), size=256, task="gray2color")["out"]
    ckpt = os.path.join(root, arch)
    os.makedirs(ckpt, exist_ok=True)
    torch.manual_seed(0)
    save_checkpoint(os.path.join(ckpt, "G.pth"), load_generator(arch=arch, ngf=64))
    save_checkpoint(os.path.join(ckpt, "D.pth"), load_discriminator(ndf=64))
    config = {"generator": os.path.join(ckpt, "G.pth"), "discriminator": os.path.join(ckpt, "D.pth"),
              "g_arch": arch, "ngf": 64, "ndf": 64, "dataroot": data, "fid": False, "latency": False,
              "g_agent": "template", "d_agent": "template", **PROBE}   # the uniform agent: a winner in 6 rounds
    out = os.path.join(root, f"run_{arch}")
    shutil.rmtree(out, ignore_errors=True)   # a fresh run: every stage runs and says its pace
    captured = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(captured):
        run_pipeline(config, out, progress=True)
    wall = time.perf_counter() - start
    paces = {}
    for line in captured.getvalue().splitlines():
        m = FORECAST.match(line.strip())
        if m and _stage(m["label"]):
            paces.setdefault(_stage(m["label"]), float(m["pace"]))
    history = pd.read_csv(os.path.join(out, "search", "history.csv"))
    paces["search"] = float(history.loc[history["phase"] == "search", "seconds"].median())   # one candidate each
    with open(os.path.join(out, ".done", "evaluate"), encoding="utf-8") as fh:
        evaluate_s = float(yaml.safe_load(fh)["seconds"])
    row = {"arch": arch, "threads": threads, "probe run s": wall, "evaluate s (val, no FID)": evaluate_s}
    for stage, units in DEFAULT_UNITS.items():
        pace = paces.get(stage, float("nan"))
        row[f"{stage} s/unit"] = pace
        row[f"{stage} at default (min)"] = pace * units / 60
    row["total at defaults (min)"] = sum(row[f"{s} at default (min)"] for s in DEFAULT_UNITS) + evaluate_s / 60
    return row


def main():
    ap = parser(__doc__, "bench_realsize")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    archs = ["unet_256"] if args.quick else ["unet_256", "resnet_9blocks"]
    rows = [measure(arch, args.out, args.threads) for arch in archs]
    table = pd.DataFrame(rows)
    table.to_csv(os.path.join(args.out, "bench_realsize.csv"), index=False)
    print(f"\ndefaults: supernet {DEFAULT_UNITS['supernet']} steps, search {DEFAULT_UNITS['search']} rounds (at least), "
          f"fine-tune {DEFAULT_UNITS['fine-tune']} steps at batch 1; 256² images; CPU, {args.threads} threads\n")
    print(table.round(3).to_markdown(index=False))


if __name__ == "__main__":
    main()
