"""Does pruning turn fewer MACs into lower CPU latency, and on which runtime? Dense vs 1/4- and 1/8-width nets.

For unet_256 and resnet_9blocks (256², batch 1), every group is pruned to the same fraction of its width
(``SearchSpace.uniform``: multiples of 8, ≈15× and ≈54× fewer MACs), magnitude (L2) pruning. For each
thread count, all variants on all runtimes run interleaved in this one process (one call each per round,
rotating order), so a noisy neighbour hits every candidate alike. Printed per row: the median ms with its
10th–90th percentile spread, and

    efficiency = (dense latency / pruned latency) / (dense MACs / pruned MACs)

with the speedup taken round by round (dense and pruned timed within one rotation) and reported as the
median with its 10th–90th percentile. "vs best dense" divides by the fastest runtime's dense time instead
of the same runtime's. Then, per arch, where the time goes: ONNX Runtime's and torch's profilers, dense
vs the smallest variant per op type (``ganprune.metrics.op_profile``).

    python benchmarks/bench_latency.py --quick             # 128² (unet_128, resnet_9blocks): a few minutes
    python benchmarks/bench_latency.py --out latency.csv   # 256², 15 rounds, 1 and 2 threads
    python benchmarks/bench_latency.py --round-to 8,16,32  # also widths rounded to 16 and 32

``--predict`` instead checks what a ms budget promises: for the benchmark teacher's graph (unet_64, ngf 32,
64²; ``GANPRUNE_RANK_CACHE`` set: the trained teacher of bench_rank, else the same graph untrained, as latency
does not depend on weight values) and resnet_6blocks (ngf 16, 64²), a ``LatencyTable`` on ONNX Runtime at each
thread count, then width sets (uniform fractions the table was not calibrated on, and random widths of the
space) physically pruned, exported with ``export_onnx`` and their files timed in ONNX Runtime, interleaved
and warm (each timed call right after an untimed one of the same file, as when the file runs alone).
Per width set: predicted ms, the measured fastest and median call, and the error against each.

    python benchmarks/bench_latency.py --predict --quick  # 6 width sets per arch and thread count: ~2 min
    python benchmarks/bench_latency.py --predict          # 12 width sets, 40 rounds

Runtimes: torch (BN folded), ONNX Runtime, and OpenVINO / ExecuTorch-XNNPACK when installed
(``pip install 'ganprune[openvino,executorch]'``). Threads do not spin while idle (ONNX Runtime's
allow_spinning=0, OMP_WAIT_POLICY=PASSIVE for torch unless --omp-spin).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

if __name__ == "__main__" and "--omp-spin" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch loads OpenMP

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from ganprune.metrics.latency import LatencyTable, available_backends, measure_latency, parse_backend  # noqa: E402
from ganprune.models.checkpoint import load_discriminator, load_generator  # noqa: E402
from ganprune.pruning.physical import prune  # noqa: E402
from ganprune.pruning.space import SearchSpace  # noqa: E402

FRACTIONS = (0.25, 0.125)
ARCHS = {  # name: (builder, input channels)
    "unet_256": (lambda: load_generator(arch="unet_256"), 3),
    "unet_128": (lambda: load_generator(arch="unet_128"), 3),
    "resnet_9blocks": (lambda: load_generator(arch="resnet_9blocks"), 3),
    "basic": (lambda: load_discriminator(arch="basic"), 6),
}


def rounded_widths(space: SearchSpace, fraction: float, multiple: int) -> dict:
    """Every group at ``fraction`` of its width rounded to a multiple of ``multiple`` (at least one multiple)."""
    return {g.name: min(g.full, max(multiple, int(round(fraction * g.full / multiple)) * multiple))
            for g in space.groups}


def build_variants(arch: str, size: int, fractions, round_to) -> tuple:
    build, channels = ARCHS[arch]
    torch.manual_seed(0)
    dense = build().eval()
    x = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(0))
    space = SearchSpace.from_model(dense, x, arch=arch)
    variants = {"dense": (dense, space.macs(space.full_widths()))}
    for f in fractions:
        for r in round_to:
            widths = space.uniform(f) if r == 8 else rounded_widths(space, f, r)
            name = f"1/{round(1 / f)}" + ("" if r == 8 else f" r{r}")
            variants[name] = (prune(dense, widths, x, importance="l2").eval(), space.macs(widths))
    return variants, x


def _spread(values) -> str:
    lo, hi = np.percentile(values, [10, 90])
    return f"{lo:.3g}–{hi:.3g}"


def time_arch(arch: str, variants: dict, x: torch.Tensor, threads: int, backends, warmup: int, repeats: int) -> list:
    lat = measure_latency({k: v[0] for k, v in variants.items()}, tuple(x.shape), threads=threads, warmup=warmup,
                          repeats=repeats, backends=backends, progress=False)
    times = {k: np.asarray(v) for k, v in lat.attrs["times_ms"].items()}
    best_dense = min(backends, key=lambda b: np.median(times[("dense", b)]))
    dense_macs = variants["dense"][1]
    rows = []
    for name, (_, macs) in variants.items():
        reduction = dense_macs / macs
        for b in backends:
            t = times[(name, b)]
            eff = times[("dense", b)] / t / reduction          # round by round: paired within one rotation
            vs_best = times[("dense", best_dense)] / t / reduction
            rows.append({"arch": arch, "threads": threads, "variant": name, "MACs ×": reduction, "runtime": b,
                         "ms": float(np.median(t)), "ms p10–p90": _spread(t),
                         "speedup ×": float(np.median(times[("dense", b)] / t)),
                         "eff": float(np.median(eff)), "eff p10–p90": _spread(eff),
                         "eff vs best dense": float(np.median(vs_best))})
    return rows


def profile_arch(arch: str, variants: dict, x: torch.Tensor) -> list[str]:
    """Per-op-type tables, dense vs the smallest variant, ONNX Runtime and torch at 1 thread."""
    import tempfile

    from ganprune.deploy.export import export_onnx
    from ganprune.deploy.fuse import fold_batchnorm
    from ganprune.metrics.op_profile import op_breakdown, ort_op_times, torch_op_times
    small = min(variants, key=lambda k: variants[k][1])
    reduction = variants["dense"][1] / variants[small][1]
    out = []
    with tempfile.TemporaryDirectory(prefix="ganprune-bench-") as workdir:
        ort, tch = {}, {}
        for name in ("dense", small):
            path = os.path.join(workdir, f"{len(ort)}.onnx")
            export_onnx(variants[name][0], path, x, check=False, parity=False)
            ort[name] = ort_op_times(path, x, threads=1)
            tch[name] = torch_op_times(fold_batchnorm(variants[name][0]), x, threads=1, runs=3 if name == "dense" else 10)
    for label, prof in (("ONNX Runtime", ort), ("torch (BN folded)", tch)):
        table = op_breakdown(prof["dense"], prof[small], reduction)
        out.append(f"\n{arch}, {label}, 1 thread: per op type, dense vs {small} ({reduction:.1f}× fewer MACs); "
                   f"eff = op speedup ÷ MACs reduction\n\n" + table.to_markdown(index=False, floatfmt=".3g"))
    return out


PREDICT_ARCHS = ("unet_64", "resnet_6blocks")


def predict_net(arch: str):
    """The generator and input of ``--predict``'s ``arch`` (see the module docstring)."""
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    if arch == "unet_64" and os.environ.get("GANPRUNE_RANK_CACHE"):
        from bench_rank import TEACHER, teacher_dir
        from ganprune.train.teacher import load_teacher
        G = load_teacher(teacher_dir(os.environ["GANPRUNE_RANK_CACHE"], TEACHER["steps"])[1])[0]
        return G, x, "unet_64 ngf 32 (bench_rank's teacher)"
    torch.manual_seed(0)
    ngf = 32 if arch == "unet_64" else 16
    return load_generator(arch=arch, ngf=ngf).eval(), x, f"{arch} ngf {ngf} (untrained)"


def width_sets(space: SearchSpace, n: int, seed: int = 1) -> dict:
    """Uniform fractions between the table's calibration slices, then random widths (another seed than the
    table's own random slices), ``n`` in all, duplicates skipped."""
    import random
    rng = random.Random(seed)
    sets = {}
    for f in (1.0, 0.875, 0.625, 0.3, 0.18):
        sets.setdefault(tuple(space.uniform(f).items()), f"uniform {f:g}")
    uniform = len(sets)
    while len(sets) < n:
        widths = tuple((g.name, rng.choice(g.choices)) for g in space.groups)
        sets.setdefault(widths, f"random {len(sets) - uniform + 1}")
    return {name: dict(widths) for widths, name in list(sets.items())[:n]}


def predicted_vs_measured(arch: str, threads: int, n_sets: int, warmup: int, repeats: int) -> list[dict]:
    """One ``LatencyTable`` on ONNX Runtime at ``threads``, checked against exported files of ``n_sets`` width sets."""
    import tempfile

    from ganprune.deploy.export import export_onnx
    G, x, label = predict_net(arch)
    space = SearchSpace.from_model(G, x, arch=arch)
    start = time.perf_counter()
    table = LatencyTable.build(G, space, x, threads=threads, backend="onnxruntime", progress=False)
    built = time.perf_counter() - start
    sets = width_sets(space, n_sets)
    with tempfile.TemporaryDirectory(prefix="ganprune-bench-") as workdir:
        files = {}
        for name, widths in sets.items():
            files[name] = os.path.join(workdir, f"{len(files)}.onnx")
            export_onnx(prune(G, widths, x), files[name], x, check=False, parity=False)
        lat = measure_latency(files, tuple(x.shape), threads=threads, warmup=warmup, repeats=repeats,
                              backends=("onnxruntime",), progress=False, warm=True)
    dense = space.macs(space.full_widths())
    rows = []
    for r in lat.itertuples():
        predicted = table.predict(sets[r.model])
        rows.append({"arch": label, "threads": threads, "width set": r.model,
                     "MACs ×": dense / space.macs(sets[r.model]), "predicted ms": predicted,
                     "fastest ms": r.min_ms, "median ms": r.median_ms,
                     "error %": 100 * (predicted / r.min_ms - 1),
                     "error vs median %": 100 * (predicted / r.median_ms - 1),
                     "table s": built})
    return rows


def predict_main(args, threads) -> int:
    n_sets, repeats = (6, args.repeats or 20) if args.quick else (12, args.repeats or 40)
    warmup = args.warmup if args.warmup is not None else 3
    start = time.perf_counter()
    rows = []
    for arch in PREDICT_ARCHS:
        for t in threads:
            print(f"{arch}: latency table and {n_sets} exported width sets, {t} thread(s)", file=sys.stderr)
            rows += predicted_vs_measured(arch, t, n_sets, warmup, repeats)
    table = pd.DataFrame(rows)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nPredicted vs measured (ONNX Runtime, exported file, batch 1, 64²): the table's prediction against "
          f"the fastest and the median of {repeats} interleaved warm calls after {warmup} warm-up; "
          f"{os.cpu_count()} CPUs, load average {load:.1f} at the end, {time.perf_counter() - start:.0f} s\n")
    print(table.drop(columns="table s").to_markdown(index=False, floatfmt=".3g"))
    summary = table.assign(abs_err=table["error %"].abs(), abs_err_median=table["error vs median %"].abs()).groupby(
        ["arch", "threads"]).agg(**{"median |error| %": ("abs_err", "median"), "max |error| %": ("abs_err", "max"),
                                    "median |error vs median| %": ("abs_err_median", "median"),
                                    "max |error vs median| %": ("abs_err_median", "max"),
                                    "table build s": ("table s", "first")}).reset_index()
    print("\nPer arch and thread count:\n")
    print(summary.to_markdown(index=False, floatfmt=".3g"))
    if args.out:
        from ganprune.core.io import atomic_write_text
        atomic_write_text(args.out, table.to_csv(index=False))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="128² images (unet_128 for unet_256), 5 rounds")
    p.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts (default 1,2)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 15, quick 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 2)")
    p.add_argument("--backends", default=None, help="comma-separated runtimes (default: torch+fold, onnxruntime "
                   "and every optional runtime installed: " + ", ".join(available_backends()[2:]) + ")")
    p.add_argument("--archs", default=None, help="comma-separated (default unet_256,resnet_9blocks; quick: unet_128 "
                   "for unet_256); also basic (the PatchGAN D)")
    p.add_argument("--fractions", default=",".join(map(str, FRACTIONS)), help="width fractions (default 0.25,0.125)")
    p.add_argument("--round-to", default="8", help="comma-separated width multiples to compare (default 8)")
    p.add_argument("--no-profile", action="store_true", help="skip the per-op-type profile")
    p.add_argument("--omp-spin", action="store_true", help="leave OMP_WAIT_POLICY unset (OpenMP threads spin when idle)")
    p.add_argument("--predict", action="store_true", help="only the latency table's predictions vs exported ONNX files "
                   "measured in ONNX Runtime (see above)")
    p.add_argument("--out", help="also write the table as CSV here")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
    warnings.filterwarnings("ignore", category=FutureWarning)   # ExecuTorch's lowering, once per export
    if args.predict:
        return predict_main(args, [int(t) for t in args.threads.split(",")])
    backends = tuple(b.strip() for b in (args.backends or ",".join(["torch+fold", "onnxruntime",
                                                                     *available_backends()[2:]])).split(","))
    for b in backends:
        parse_backend(b)
    size = 128 if args.quick else 256
    archs = args.archs.split(",") if args.archs else ["unet_128" if args.quick else "unet_256", "resnet_9blocks"]
    unknown = [a for a in archs if a not in ARCHS]
    if unknown:
        p.error(f"unknown arch {unknown[0]!r}; choose from {', '.join(ARCHS)}")
    threads = [int(t) for t in args.threads.split(",")]
    repeats = args.repeats or (5 if args.quick else 15)
    warmup = args.warmup if args.warmup is not None else 2
    fractions = [float(f) for f in args.fractions.split(",")]
    round_to = [int(r) for r in args.round_to.split(",")]
    start = time.perf_counter()
    rows, profiles = [], []
    for arch in archs:
        variants, x = build_variants(arch, size, fractions, round_to)
        for t in threads:
            print(f"{arch}: {len(variants)} variants × {len(backends)} runtimes, {t} thread(s), {size}²", file=sys.stderr)
            rows += time_arch(arch, variants, x, t, backends, warmup, repeats)
        if not args.no_profile:
            profiles += profile_arch(arch, variants, x)
    table = pd.DataFrame(rows)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nbatch 1, {size}×{size}; median of {repeats} interleaved rounds after {warmup} warm-up, 10th–90th "
          f"percentile beside; eff = latency speedup ÷ MACs reduction, same runtime, round by round; "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, load average {load:.1f} at the end, {time.perf_counter() - start:.0f} s\n")
    print(table.to_markdown(index=False, floatfmt=".3g"))
    best = table[table.variant != "dense"].loc[lambda d: d.groupby(["arch", "threads", "variant"]).ms.idxmin()]
    print("\nFastest runtime per pruned variant:\n")
    print(best[["arch", "threads", "variant", "MACs ×", "runtime", "ms", "eff", "eff p10–p90",
                "eff vs best dense"]].to_markdown(index=False, floatfmt=".3g"))
    for text in profiles:
        print(text)
    if args.out:
        from ganprune.core.io import atomic_write_text
        atomic_write_text(args.out, table.to_csv(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
