"""CPU inference latency of several models and runtimes, measured so that they can be compared.

The runs are interleaved: each repeat times every (model, backend) once, in a rotating order, so a
noisy neighbour or a clock change hits all candidates alike instead of whichever ran at that moment.
Thread counts are fixed (torch and ONNX Runtime alike) and reported with the numbers; the median and
90th percentile of the per-call times are returned.

Backends are named ``base[+modifier...]``:

* ``torch``: eager PyTorch in eval mode under ``torch.inference_mode``; modifiers ``fold`` (BatchNorm
  folded into the convs, see ``ganprune.deploy.fuse``) and ``cl`` (channels_last memory layout).
* ``onnxruntime``: ONNX Runtime's CPU provider on a BN-folded export (or the given ``.onnx`` file),
  graph optimisation "all" unless a modifier ``basic``, ``extended`` or ``disable`` says otherwise.
* ``openvino`` and ``executorch`` (XNNPACK): the files ``ganprune.deploy.export.export_model`` writes, run by
  ``ganprune.deploy.runtimes`` (optional packages; ``available_backends`` lists those installed).

CPU only: it measures the deployment target that pruning is for; models given on a GPU are copied
to the CPU. ONNX Runtime threads do not spin while idle; for torch's OpenMP threads the same needs
``OMP_WAIT_POLICY=PASSIVE`` in the environment before Python starts (it cannot be changed once torch
is loaded). On a machine shared with other work, spinning OpenMP threads make torch several times
slower and erratic, and slow ONNX Runtime in the same process; ``benchmarks/bench_latency.py`` sets it.
"""
from __future__ import annotations

import copy
import math
import os
import tempfile
from typing import Callable, Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn

from ganprune.core.errors import UserError
from ganprune.core.timing import interleaved

TORCH_MODIFIERS = ("fold", "cl")
ORT_LEVELS = ("basic", "extended", "disable")
FILE_BACKENDS = {"openvino": "openvino", "executorch": "pte"}  # backend: ganprune.deploy.runtimes format


def available_backends() -> list[str]:
    """torch, onnxruntime, and the optional runtimes whose packages are installed."""
    from ganprune.deploy.runtimes import available
    return ["torch", "onnxruntime", *[b for b, fmt in FILE_BACKENDS.items() if available(fmt)]]


def parse_backend(name: str) -> tuple[str, set[str]]:
    """``"torch+fold+cl"`` → ``("torch", {"fold", "cl"})``, validated."""
    base, *mods = str(name).split("+")
    allowed = {"torch": TORCH_MODIFIERS, "onnxruntime": ORT_LEVELS, **{b: () for b in FILE_BACKENDS}}.get(base)
    if allowed is None:
        raise UserError(f"backend {name!r}: expected torch[+fold][+cl], onnxruntime[+basic|+extended|+disable], "
                        f"{' or '.join(FILE_BACKENDS)}")
    bad = [m for m in mods if m not in allowed]
    if bad or (base == "onnxruntime" and len(mods) > 1):
        raise UserError(f"backend {name!r}: unknown or conflicting modifier {'+'.join(bad or mods)}; "
                        f"{base} takes {', '.join(allowed)}")
    return base, set(mods)


def _torch_runner(model: nn.Module, x: torch.Tensor, mods: set[str]) -> Callable[[], object]:
    from ganprune.deploy.fuse import fold_batchnorm
    net = fold_batchnorm(model) if "fold" in mods else copy.deepcopy(model).eval()
    net = net.to("cpu", torch.float32)
    if "cl" in mods:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    return lambda: net(x)


def _ort_runner(model, x: torch.Tensor, mods: set[str], threads: int, workdir: str, name: str) -> Callable[[], object]:
    from ganprune.deploy.runtimes import ort_session
    if isinstance(model, nn.Module):
        from ganprune.deploy.export import export_onnx
        path = os.path.join(workdir, f"{len(os.listdir(workdir))}.onnx")
        export_onnx(model, path, x, fold_bn=True, check=False, parity=False)
    else:
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise UserError(f"{path}: ONNX file not found (model {name!r})")
    session = ort_session(path, threads=threads, optimization=next(iter(mods), "all"))
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)


def _file_runner(model, x: torch.Tensor, base: str, threads: int, workdir: str, name: str) -> Callable[[], object]:
    """A runner for an optional runtime: ``model`` exported to its format (unchecked), then loaded."""
    from ganprune.deploy.runtimes import FORMATS, load_runner, require
    fmt = FILE_BACKENDS[base]
    require(fmt)
    if isinstance(model, nn.Module):
        from ganprune.deploy.export import export_model
        path = os.path.join(workdir, f"{len(os.listdir(workdir))}{FORMATS[fmt]}")
        export_model(model, path, x, fmt=fmt, check=False, dynamic_hw=False, threads=threads)
    else:
        path = os.fspath(model)
    run = load_runner(path, threads, fmt)
    xn = x.numpy()
    return lambda: run(xn)


def _check_runs(name: str, model: nn.Module, x: torch.Tensor) -> None:
    """``export.check_runs`` on a CPU fp32 eval copy (the caller's model keeps its state)."""
    from ganprune.deploy.export import check_runs
    check_runs(copy.deepcopy(model).to("cpu", torch.float32).eval(), x, f"model {name!r}")


def measure_latency(models: Mapping[str, nn.Module | str | os.PathLike], input_shape, threads: int = 2,
                    warmup: int = 3, repeats: int = 20, backends=("torch", "onnxruntime"),
                    progress: bool = True, seed: int = 0, warm: bool = False) -> pd.DataFrame:
    """Median / p90 milliseconds per call for every model and backend, from interleaved runs.

    ``models`` maps a name to an ``nn.Module`` or to an ``.onnx`` path (an ONNX file runs only on the
    onnxruntime backends; its torch rows are left out). ``input_shape`` is the full input shape
    including batch, e.g. ``(1, 3, 256, 256)``. Returns one row per (model, backend) with columns
    model, backend, threads, input, median_ms, p90_ms, min_ms, repeats. The input models are not
    modified, and torch's thread count is restored afterwards. ``warm``: every timed call comes right
    after an untimed call of the same model, so it runs with its weights in cache as a model run alone
    does (interleaved models evict each other's); the time of one file as its user measures it.
    """
    if not models:
        raise UserError("measure_latency: no models given")
    if threads < 1 or repeats < 1 or warmup < 0:
        raise UserError(f"measure_latency: need threads >= 1, repeats >= 1, warmup >= 0 "
                        f"(got {threads}, {repeats}, {warmup})")
    parsed = [(b, *parse_backend(b)) for b in backends]
    x = torch.randn(tuple(input_shape), generator=torch.Generator().manual_seed(seed))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="ganprune-latency-") as workdir:
            runners: list[tuple[str, str, Callable]] = []
            for name, model in models.items():
                if isinstance(model, nn.Module):
                    _check_runs(name, model, x)
                for backend, base, mods in parsed:
                    if base == "torch" and isinstance(model, nn.Module):
                        runners.append((name, backend, _torch_runner(model, x, mods)))
                    elif base == "onnxruntime":
                        runners.append((name, backend, _ort_runner(model, x, mods, threads, workdir, name)))
                    elif base in FILE_BACKENDS and isinstance(model, nn.Module):
                        runners.append((name, backend, _file_runner(model, x, base, threads, workdir, name)))
            times = interleaved(runners, warmup, repeats, progress, calls=2 if warm else 1)
    finally:
        torch.set_num_threads(previous_threads)
    rows = []
    for (name, backend, _), t in zip(runners, times):
        ms = np.asarray(t) * 1e3
        rows.append({"model": name, "backend": backend, "threads": threads,
                     "input": "x".join(map(str, input_shape)), "median_ms": float(np.median(ms)),
                     "p90_ms": float(np.percentile(ms, 90)), "min_ms": float(ms.min()), "repeats": repeats})
    df = pd.DataFrame(rows)
    # Per-round times, paired across models: round r of every runner ran within one rotation.
    df.attrs["times_ms"] = {(name, backend): [v * 1e3 for v in t] for (name, backend, _), t in zip(runners, times)}
    df.attrs["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "unset")
    return df


# --------------------------------------------------------------------------- per-layer lookup table

_CONV_TYPES = (nn.Conv2d, nn.ConvTranspose2d)


def _affine(form, widths: Mapping[str, int]) -> int:
    const, coefs = form
    return int(const + sum(c * widths[g] for g, c in coefs.items()))


def _interp2(in_values, out_values, grid, cin: float, cout: float) -> float:
    """Bilinear interpolation on the measured (in, out) grid, clamped at its edges."""
    rows = [np.interp(cout, out_values, row) for row in grid]
    return float(np.interp(cin, in_values, rows))


class LatencyTable:
    """Predicts a pruned net's latency in milliseconds from its widths, without building the net.

    Every convolution is timed on its own at a grid of input/output widths (the space's uniform
    fractions; identical layers are timed once), interleaved like ``measure_latency``. A prediction
    interpolates each conv's time at the widths' channel counts and sums them, then maps the sum to
    whole-model time as ``s · convs + a + b · Σ conv output elements`` (``_fit_whole_model``), fitted
    to whole pruned models (uniform fractions and a few random widths) exported and timed on the same
    backend and thread count. On ONNX Runtime that is the file ``export_onnx`` ships, so a ms budget is
    a budget on the shipped file. Timing each conv at the deployment thread count captures how well each
    layer uses those threads (a narrow one may not keep a second core busy), which MACs cannot.
    ``predict`` takes microseconds, so agents can budget in ms as they budget in MACs. Widths narrower
    than the grid are clamped to it (an overestimate).

    All times are warm (``measure_latency``'s ``warm``: a model's time as it runs alone) and the fastest
    of the interleaved calls: on a shared machine a call is either preempted (a scheduler slice,
    milliseconds, added to it) or not, and the undisturbed time is the one a dedicated deployment
    machine sees; the median of a busy machine's calls is mostly its load.
    """

    def __init__(self, data: dict):
        self.data = data
        self.full = dict(data["full"])

    @classmethod
    def build(cls, model: nn.Module, space, example_input: torch.Tensor, threads: int = 2,
              backend: str = "onnxruntime", fractions=(0.125, 0.25, 0.5, 0.75, 1.0),
              calibrate=(1.0, 0.75, 0.5, 0.375, 0.25, 0.125), random_slices: int = 3, warmup: int = 2,
              repeats: int = 20, progress: bool = True, seed: int = 0) -> "LatencyTable":
        """Time ``model``'s convs on ``backend`` at batch 1 and fit the whole-model map on the uniform
        slices ``calibrate`` and ``random_slices`` random widths (seeded), ``model`` untouched."""
        from ganprune.pruning.physical import prune
        parse_backend(backend)
        x = example_input.detach().to("cpu", torch.float32)[:1]
        layers = _conv_layers(model, x, space)
        full = space.full_widths()
        grid_widths = [space.uniform(float(f)) for f in fractions] + [full]
        for layer in layers:
            layer["in_values"] = sorted({_affine(layer["in_form"], w) for w in grid_widths})
            layer["out_values"] = sorted({_affine(layer["out_form"], w) for w in grid_widths})
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            times = _time_layers(layers, backend, threads, warmup, repeats, progress)
        finally:
            torch.set_num_threads(previous_threads)
        for layer in layers:
            layer["ms"] = [[times[_layer_key(layer, cin, cout)] for cout in layer["out_values"]]
                           for cin in layer["in_values"]]
        table = cls({"backend": backend, "threads": threads, "input_shape": list(x.shape), "full": full,
                     "layers": layers, "fit": [1.0, 0.0, 0.0], "calibration": []})
        slices = {f"uniform {float(f):g}": space.uniform(float(f)) for f in calibrate}
        rng = np.random.default_rng(seed)
        for i in range(random_slices):
            slices[f"random {i}"] = {g.name: int(rng.choice(g.choices)) for g in space.groups}
        nets = {k: model if w == full else prune(model, w, x) for k, w in slices.items()}
        measured = measure_latency(nets, tuple(x.shape), threads=threads, warmup=warmup, repeats=repeats,
                                   backends=(backend,), progress=progress, warm=True)
        rows = [{"slice": r.model, "measured_ms": r.min_ms, "convs_ms": table._convs_ms(slices[r.model]),
                 "activations": table._activations(slices[r.model])} for r in measured.itertuples()]
        table.data["fit"] = _fit_whole_model(rows)
        for row in rows:
            row["predicted_ms"] = table.predict(slices[row["slice"]])
        table.data["calibration"] = rows
        return table

    def _widths(self, widths: Mapping[str, int]) -> dict[str, int]:
        out = dict(self.full)
        for name, w in widths.items():
            if name not in out:
                raise UserError(f"widths: unknown group {name!r}; groups are: {', '.join(out)}")
            if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or not 1 <= w <= out[name]:
                raise UserError(f"widths[{name!r}] = {w!r}: expected an integer from 1 to {out[name]}")
            out[name] = int(w)
        return out

    def _convs_ms(self, widths) -> float:
        w = self._widths(widths)
        return sum(_interp2(layer["in_values"], layer["out_values"], layer["ms"],
                            _affine(layer["in_form"], w), _affine(layer["out_form"], w))
                   for layer in self.data["layers"])

    def _activations(self, widths) -> int:
        w = self._widths(widths)
        return sum(_affine(layer["out_form"], w) * layer["out_hw"][0] * layer["out_hw"][1]
                   for layer in self.data["layers"])

    def predict(self, widths: Mapping[str, int]) -> float:
        """Predicted milliseconds per call at batch 1 for the net pruned to ``widths`` (missing groups: full)."""
        s, a, b = self.data["fit"]
        return s * self._convs_ms(widths) + a + b * self._activations(widths)

    def calibration(self):
        """The whole-model measurements the fit used, with the table's predictions."""
        import pandas as pd
        return pd.DataFrame(self.data["calibration"])

    def save(self, path) -> None:
        from ganprune.core.io import atomic_write_yaml
        atomic_write_yaml(path, self.data)

    @classmethod
    def load(cls, path) -> "LatencyTable":
        from ganprune.core.options import read_yaml
        data = read_yaml(path, "latency table")
        if not isinstance(data, dict) or not {"full", "layers", "fit"} <= set(data):
            raise UserError(f"{path}: not a latency table (expected keys full, layers, fit)")
        fit, layers = data["fit"], data["layers"]
        if not (isinstance(fit, list) and len(fit) == 3 and all(_finite(v) for v in fit) and fit[0] >= 0
                and fit[2] >= 0):
            raise UserError(f"{path}: fit must be 3 finite numbers [s, a, b], s and b non-negative, got {fit!r}; "
                            "delete the table to measure it again")
        if not isinstance(data["full"], dict) or not isinstance(layers, list) or not all(
                isinstance(layer, dict) and isinstance(layer.get("ms"), list)
                and all(isinstance(row, list) and all(_finite(v) and v >= 0 for v in row) for row in layer["ms"])
                for layer in layers):
            raise UserError(f"{path}: full must be a mapping and every layer's ms finite non-negative numbers; "
                            "delete the table to measure it again")
        return cls(data)

    def __repr__(self) -> str:
        return (f"LatencyTable({len(self.data['layers'])} convs, {self.data['backend']}, "
                f"{self.data['threads']} threads, dense {self.predict({}):.1f} ms)")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fit_whole_model(rows) -> list[float]:
    """Least squares in relative error for ``measured ≈ s · convs + a + b · activations``, ``s, b >= 0``.

    ``s`` absorbs what timing convs one by one gets wrong for a whole graph (fusions inside a graph,
    threads a lone small conv cannot use); ``b · activations`` is the non-conv ops (norms, activations,
    concatenation, padding), which scale with the feature maps. ``a`` may be negative: every conv timed
    on its own paid one runtime call (input copy, output allocation, dispatch) that inside the whole
    graph it does not, and convs are never pruned away, so that surplus is a constant. Relative error,
    so the dense slice does not outweigh the small ones a tight budget is about.

    A preemption only ever adds time, a scheduler slice of milliseconds, and a long call can be hit in
    every round on a busy machine: the slice furthest above the fit, by more than 30% (more than the
    model's own misfit), is left out once (marked ``left_out``) when five or more remain."""
    coef = _fit_rows(rows)
    if len(rows) >= 6:
        excess = [row["measured_ms"] / _fitted(coef, row) - 1 for row in rows]
        worst = int(np.argmax(excess))
        if excess[worst] > 0.3:
            rows[worst]["left_out"] = True
            coef = _fit_rows([row for i, row in enumerate(rows) if i != worst])
    return coef


def _fitted(coef, row) -> float:
    return coef[0] * row["convs_ms"] + coef[1] + coef[2] * row["activations"]


def _fit_rows(rows) -> list[float]:
    """Every subset of the three unknowns is tried; the best fit with ``s, b >= 0`` that keeps every
    row's prediction positive wins (the plain sum of the convs when none does)."""
    if not rows:
        return [1.0, 0.0, 0.0]
    columns = np.array([[row["convs_ms"], 1.0, row["activations"]] for row in rows], dtype=float)
    target = np.array([row["measured_ms"] for row in rows], dtype=float)
    scale = np.abs(columns).max(axis=0)
    scale[scale == 0] = 1.0
    design = columns / scale / target[:, None]       # rows divided by the target: relative residuals
    best, best_sse = np.array([1.0, 0.0, 0.0]), float((((columns[:, 0] - target) / target) ** 2).sum())
    for mask in range(1, 8):
        active = [j for j in range(3) if mask >> j & 1]
        coef = np.linalg.lstsq(design[:, active], np.ones(len(target)), rcond=None)[0]
        full = np.zeros(3)
        full[active] = coef
        if full[0] < 0 or full[2] < 0 or ((columns / scale) @ full <= 0).any():
            continue
        sse = float(((design @ full - 1) ** 2).sum())
        if sse < best_sse:
            best, best_sse = full / scale, sse
    return [float(v) for v in best]


def _conv_layers(model: nn.Module, x: torch.Tensor, space) -> list[dict]:
    """Each conv's in/out channels as affine forms of the group widths, its config and feature-map size."""
    from ganprune.pruning.graph import coupled_groups, dependency_graph
    net = copy.deepcopy(model).to("cpu", torch.float32).eval()
    DG = dependency_graph(net, x)
    groups = {g.name: g for g in coupled_groups(net, DG)}
    missing = [g.name for g in space.groups if g.name not in groups]
    if missing:
        raise UserError(f"LatencyTable: the search space's group {missing[0]!r} is not a group of this model")
    convs = [(p, m) for p, m in net.named_modules() if isinstance(m, _CONV_TYPES)]
    coefs = {m: ({}, {}) for _, m in convs}  # (in coefficients, out coefficients) per group
    for g in space.groups:
        root = groups[g.name].root
        group = DG.get_pruning_group(root, DG.get_pruner_of_module(root).prune_out_channels, [0])
        for dep, idxs in group:
            m = dep.target.module
            if m in coefs:
                side = 1 if DG.is_out_channel_pruning_fn(dep.handler) else 0
                coefs[m][side][g.name] = coefs[m][side].get(g.name, 0) + len(idxs)
    sizes = {}

    def record(module, inputs, output):  # returns None: a hook's return value would replace the output
        sizes.setdefault(module, (list(inputs[0].shape[2:]), list(output.shape[2:])))
    hooks = [m.register_forward_hook(record) for _, m in convs]
    try:
        with torch.inference_mode():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    layers = []
    for path, m in convs:
        if m.groups != 1:
            raise UserError(f"LatencyTable: {path} is a grouped conv (groups={m.groups}); only groups=1 is supported")
        if m not in sizes:
            continue  # not on the forward path
        full = space.full_widths()
        cin, cout = coefs[m]
        layers.append({
            "path": path, "transposed": isinstance(m, nn.ConvTranspose2d),
            "in_form": [m.in_channels - sum(c * full[g] for g, c in cin.items()), cin],
            "out_form": [m.out_channels - sum(c * full[g] for g, c in cout.items()), cout],
            "kernel_size": list(m.kernel_size), "stride": list(m.stride), "padding": list(m.padding),
            "dilation": list(m.dilation), "output_padding": list(getattr(m, "output_padding", (0, 0))),
            "in_hw": sizes[m][0], "out_hw": sizes[m][1]})
    return layers


def _layer_key(layer: dict, cin: int, cout: int) -> tuple:
    return (layer["transposed"], cin, cout, *map(tuple, (layer["kernel_size"], layer["stride"], layer["padding"],
                                                         layer["dilation"], layer["output_padding"], layer["in_hw"])))


def _time_layers(layers, backend: str, threads: int, warmup: int, repeats: int, progress: bool) -> dict:
    """Fastest warm ms of every distinct (layer config, in, out) on ``backend``, timed interleaved. The
    minimum, not the median: a short call is either hit by a disturbance or not, and the whole-model fit
    maps the undisturbed sum to undisturbed whole-model times."""
    base, mods = parse_backend(backend)
    todo = {}
    for layer in layers:
        for cin in layer["in_values"]:
            for cout in layer["out_values"]:
                todo.setdefault(_layer_key(layer, cin, cout), (layer, cin, cout))
    runners = []
    with tempfile.TemporaryDirectory(prefix="ganprune-latency-table-") as workdir:
        for key, (layer, cin, cout) in todo.items():
            cls = nn.ConvTranspose2d if layer["transposed"] else nn.Conv2d
            extra = {"output_padding": tuple(layer["output_padding"])} if layer["transposed"] else {}
            conv = cls(cin, cout, tuple(layer["kernel_size"]), stride=tuple(layer["stride"]),
                       padding=tuple(layer["padding"]), dilation=tuple(layer["dilation"]), bias=True, **extra)
            x = torch.randn(1, cin, *layer["in_hw"])
            fn = (_torch_runner(conv, x, mods) if base == "torch"
                  else _file_runner(conv, x, base, threads, workdir, str(key)) if base in FILE_BACKENDS
                  else _ort_runner(conv, x, mods, threads, workdir, str(key)))
            runners.append((key, backend, fn))
        times = interleaved(runners, warmup, repeats, progress, calls=2)
    return {key: float(np.min(t)) * 1e3 for (key, _, _), t in zip(runners, times)}
