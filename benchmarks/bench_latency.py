"""Does pruning turn fewer MACs into lower CPU latency? Dense vs ≈4× and ≈15× magnitude-pruned nets.

For unet_256, resnet_9blocks and the basic PatchGAN (6-channel input), every group is pruned to the
same fraction of its width (``SearchSpace.uniform``, widths in multiples of 8), the fraction chosen
to come closest to each target MACs reduction. All variants of one arch run interleaved (one call
each per round, rotating order) on each backend, batch 1, fixed threads, after warm-up; the table
shows the median per call.

    efficiency = (dense latency / pruned latency) / (dense MACs / pruned MACs)

on the same backend: 1.0 means latency falls exactly as fast as MACs, which is the practical ceiling.

    python benchmarks/bench_latency.py --quick            # 128², 5 rounds: a few minutes
    python benchmarks/bench_latency.py --threads 2 --out latency.csv

Run it on quiet cores: other processes competing for the CPU inflate and scatter the numbers. Both
runtimes are told not to spin while idle (ONNX Runtime's allow_spinning=0, and OMP_WAIT_POLICY=PASSIVE
for torch's OpenMP unless --omp-spin): with spinning on, a busy machine makes torch's numbers several
times worse and erratic, and torch's idle spinning threads slow ONNX Runtime running beside it.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings

if __name__ == "__main__" and "--omp-spin" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads OpenMP

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from ganprune.metrics.latency import measure_latency, parse_backend  # noqa: E402
from ganprune.models import load_discriminator, load_generator  # noqa: E402
from ganprune.prune import prune  # noqa: E402
from ganprune.space import SearchSpace  # noqa: E402

TARGETS = (4.0, 15.0)
BACKENDS = ("torch", "torch+fold", "torch+fold+cl", "onnxruntime")
ARCHS = {  # name: (builder, input channels)
    "unet_256": (lambda: load_generator(arch="unet_256"), 3),
    "unet_128": (lambda: load_generator(arch="unet_128"), 3),
    "resnet_9blocks": (lambda: load_generator(arch="resnet_9blocks"), 3),
    "basic": (lambda: load_discriminator(arch="basic"), 6),
}


def closest_widths(space: SearchSpace, target: float) -> dict:
    """Uniform widths (one fraction for every group) whose MACs reduction is nearest ``target`` (log scale)."""
    dense = space.macs(space.full_widths())
    candidates = [space.uniform(float(f)) for f in np.arange(0.05, 1.0001, 0.005)]
    return min(candidates, key=lambda w: abs(math.log(dense / space.macs(w) / target)))


def bench_arch(arch: str, size: int, threads: int, warmup: int, repeats: int, backends, stat: str) -> list[dict]:
    build, channels = ARCHS[arch]
    torch.manual_seed(0)
    dense = build().eval()
    x = torch.zeros(1, channels, size, size)
    space = SearchSpace.from_model(dense, x, arch=arch)
    dense_macs = space.macs(space.full_widths())
    variants = {"dense": (dense, space.full_widths())}
    for target in TARGETS:
        widths = closest_widths(space, target)
        variants[f"≈{target:g}×"] = (prune(dense, widths, x, importance="l2").eval(), widths)
    print(f"{arch}: measuring {len(variants)} variants × {len(backends)} backends at {size}²", file=sys.stderr)
    lat = measure_latency({name: v[0] for name, v in variants.items()}, tuple(x.shape), threads=threads,
                          warmup=warmup, repeats=repeats, backends=backends)
    ms = {(r.model, r.backend): getattr(r, f"{stat}_ms") for r in lat.itertuples()}
    rows = []
    for name, (_, widths) in variants.items():
        macs = space.macs(widths)
        reduction = dense_macs / macs
        kept = np.mean([widths[g.name] / g.full for g in space.groups])
        row = {"arch": arch, "variant": name, "mean width": round(float(kept), 3), "GMACs": macs / 1e9,
               "params (M)": space.params(widths) / 1e6, "MACs ×": reduction}
        for b in backends:
            speedup = ms[("dense", b)] / ms[(name, b)]
            row[f"{b} ms"] = ms[(name, b)]
            row[f"{b} speedup ×"] = speedup
            row[f"{b} eff"] = speedup / reduction
        best = min(backends, key=lambda b: ms[(name, b)])
        row["fastest"] = best
        row["fastest eff"] = row[f"{best} eff"]
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="128² images (unet_128 instead of unet_256), 5 rounds")
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads (default 2)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 20, quick 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 3, quick 2)")
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated (default {','.join(BACKENDS)})")
    p.add_argument("--archs", default=None, help="comma-separated subset (default: unet_256,resnet_9blocks,basic; "
                   "quick: unet_128 for unet_256)")
    p.add_argument("--stat", default="median", choices=["median", "min"], help="per-call statistic (default median)")
    p.add_argument("--omp-spin", action="store_true", help="leave OMP_WAIT_POLICY unset (OpenMP threads spin when idle)")
    p.add_argument("--out", help="also write the table as CSV here")
    args = p.parse_args(argv)
    # The legacy ONNX exporter's note about ResNet's reflection padding, once per export: not news here.
    warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    for b in backends:
        parse_backend(b)
    size = 128 if args.quick else 256
    archs = (args.archs.split(",") if args.archs else
             ["unet_128" if args.quick else "unet_256", "resnet_9blocks", "basic"])
    unknown = [a for a in archs if a not in ARCHS]
    if unknown:
        p.error(f"unknown arch {unknown[0]!r}; choose from {', '.join(ARCHS)}")
    repeats = args.repeats or (5 if args.quick else 20)
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 3)
    start = time.perf_counter()
    rows = []
    for arch in archs:
        rows += bench_arch(arch, size, args.threads, warmup, repeats, backends, args.stat)
    table = pd.DataFrame(rows)
    print(f"\nbatch 1, {size}×{size}, {args.threads} threads (torch and ONNX Runtime), {args.stat} of {repeats} "
          f"interleaved rounds after {warmup} warm-up; efficiency = latency speedup ÷ MACs reduction, same backend; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, {time.perf_counter() - start:.0f} s\n")
    print(table.to_markdown(index=False, floatfmt=".3g"))
    if args.out:
        from ganprune.io import atomic_write_text
        atomic_write_text(args.out, table.to_csv(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
