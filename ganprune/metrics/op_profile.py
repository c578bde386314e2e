"""Where the time goes, per op type: ONNX Runtime's profiler and torch's, on a dense and a pruned net.

Pruning divides a conv's MACs by roughly (width fraction)²; an op type whose time falls less than that
is what caps the latency speedup. ``op_breakdown`` sets the two profiles side by side: each op type's
milliseconds per call in both, its share of the pruned net's time, and ``speedup ÷ MACs reduction``
(1.0: it shrank as fast as the MACs; near 0: it kept its cost).
"""
from __future__ import annotations

import collections
import json
import os
import tempfile

import pandas as pd
import torch
from torch import nn


def ort_op_times(path, x: torch.Tensor, threads: int = 1, runs: int = 10, warmup: int = 3) -> dict[str, float]:
    """Milliseconds per call spent in each ONNX op type (kernel time, ORT's profiler; graph optimisation
    "all", so fused and layout-reordering nodes appear under their own names)."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads), 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(os.fspath(path), sess_options=opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    for _ in range(warmup):
        session.run(None, feed)
    with tempfile.TemporaryDirectory(prefix="ganprune-profile-") as workdir:
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(workdir, "ort")
        profiled = ort.InferenceSession(os.fspath(path), sess_options=opts, providers=["CPUExecutionProvider"])
        for _ in range(warmup + runs):
            profiled.run(None, feed)
        with open(profiled.end_profiling(), encoding="utf-8") as fh:
            events = json.load(fh)
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    cutoff = starts[warmup] if len(starts) > warmup else 0   # the profiled session's own warm-up calls excluded
    total: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= cutoff:
            total[e["args"]["op_name"]] += e["dur"]
    return {op: us / 1e3 / runs for op, us in total.most_common()}


def torch_op_times(model: nn.Module, x: torch.Tensor, threads: int = 1, runs: int = 10,
                   warmup: int = 3) -> dict[str, float]:
    """Milliseconds per call of self CPU time in each aten op (torch.profiler, eval mode, inference mode)."""
    from torch.profiler import ProfilerActivity, profile
    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(runs):
                    model(x)
    finally:
        torch.set_num_threads(previous)
    times = {e.key: e.self_cpu_time_total / 1e3 / runs for e in prof.key_averages() if e.self_cpu_time_total > 0}
    return dict(sorted(times.items(), key=lambda kv: -kv[1]))


def op_breakdown(dense: dict[str, float], pruned: dict[str, float], macs_reduction: float,
                 top: int = 8) -> pd.DataFrame:
    """Per op type: dense and pruned ms per call, share of the pruned time, speedup ÷ MACs reduction.
    Op types beyond the ``top`` slowest in the pruned net are summed into "other"."""
    ops = sorted(set(dense) | set(pruned), key=lambda op: -pruned.get(op, 0.0))
    keep, rest = ops[:top], ops[top:]
    rows = [(op, dense.get(op, 0.0), pruned.get(op, 0.0)) for op in keep]
    if rest:
        rows.append(("other", sum(dense.get(o, 0.0) for o in rest), sum(pruned.get(o, 0.0) for o in rest)))
    total = sum(pruned.values()) or 1.0
    return pd.DataFrame([{"op": op, "dense ms": d, "pruned ms": p, "share of pruned %": 100 * p / total,
                          "speedup ×": d / p if p else float("nan"),
                          "eff": (d / p) / macs_reduction if p else float("nan")} for op, d, p in rows])
