"""Export with the checks a deployment needs: valid graph, dynamic batch (and H, W where the net allows),
metadata saying what the file holds, and the same numbers as torch on image-like inputs.

torch 2.13's default exporter (``dynamo=True``) needs the optional ``onnxscript`` package; without it
the TorchScript-based legacy exporter is used (its deprecation warning is silenced, nothing else).
BatchNorm is folded into the convs first by default (``ganprune.deploy.fuse``), so the graph has none whatever
the exporter does. The parity check compares the runtime against the *unfolded* torch model, so it
covers the folding as well as the export. It runs on the caller's images when given, else on
image-like synthetic inputs: on a constant input (all zeros) InstanceNorm divides 0 by ~0 and the
comparison is meaningless. OpenVINO IR and ExecuTorch ``.pte`` files (``export_model``) are made and
checked the same way, through ``ganprune.deploy.runtimes``.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import time
import warnings

import numpy as np
import torch
from torch import nn

from ganprune.core.errors import UserError
from ganprune.deploy.fuse import count_batchnorm, fold_batchnorm
from ganprune.core.io import atomic_path, atomic_write_text

INPUT_NAME, OUTPUT_NAME = "input", "output"
# The legacy exporter's own deprecation notices; other warnings still show.
_LEGACY_DEPRECATIONS = (r"You are using the legacy TorchScript-based ONNX export",
                        r"The feature will be removed\. Please remove usage of this function")


def dynamo_available() -> bool:
    """Whether torch's default (dynamo) ONNX exporter can run: it needs ``onnxscript``."""
    try:
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def _outputs(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def image_like(shape, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [-1, 1] with some fine detail: a stand-in for calibration images when none are
    given (each channel varies, unlike a constant input, on which InstanceNorm is degenerate)."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    coarse = torch.rand(n, c, max(2, h // 16), max(2, w // 16), generator=g) * 2 - 1
    smooth = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    return (smooth + 0.1 * torch.randn(n, c, h, w, generator=g)).clamp(-1, 1)


def _degenerate(x: torch.Tensor) -> bool:
    """Some sample has a constant channel: no information for a norm layer to normalise."""
    flat = x.flatten(2)
    return bool((flat.amax(-1) - flat.amin(-1) < 1e-6).any())


def parity_inputs(example: torch.Tensor, dynamic_batch: bool, images: torch.Tensor | None = None) -> tuple:
    """(inputs, where from): batch 1 and 2 (two different images) when the batch is dynamic; the caller's
    ``images`` when given, else ``example`` unless it is degenerate, else ``image_like`` images."""
    if images is not None and not _degenerate(images[:2]):
        source, base = "given images", images.detach().to("cpu", torch.float32)
    elif not _degenerate(example):
        source, base = "the example input", example
    else:
        source, base = "synthetic image-like inputs (the example was constant)", image_like((2, *example.shape[1:]))
    one = base[:1]
    two = base[:2] if base.shape[0] >= 2 else torch.cat([one, one.flip(-1)], 0)
    return ([one, two] if dynamic_batch else [one]), source


def second_size(net: nn.Module, example: torch.Tensor) -> tuple[int, int] | None:
    """An H×W other than the example's (half, else 1.5×) on which ``net`` runs, or None: the export makes
    H and W dynamic only then, and checks parity at that size too. A U-Net whose depth fixes its input
    size fails both and keeps a fixed H×W."""
    h, w = example.shape[-2:]
    with torch.inference_mode():
        for other in ((h // 2, w // 2), (h * 3 // 2, w * 3 // 2)):
            if min(other) < 8:
                continue
            try:
                net(torch.nn.functional.interpolate(example[:1], size=other, mode="bilinear", align_corners=False))
            except RuntimeError:
                continue
            return other
    return None


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter logs its fallbacks as warnings, one with a full traceback (an opset it cannot
    convert down to is kept, e.g. 18 for InstanceNorm's Pad): an export that succeeded must not read as a
    crash. The opset actually written is reported with the result."""
    import logging
    loggers = [logging.getLogger(name) for name in ("onnxscript", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export(net: nn.Module, example: torch.Tensor, path: str, opset: int, dynamic_batch: bool, exporter: str,
            dynamic_hw: bool = False) -> None:
    if exporter == "dynamo":
        # torch.export specialises a size-1 dimension, so trace a dynamic batch with two samples.
        x = torch.cat([example[:1], example[:1].flip(-1)], 0) if dynamic_batch and example.shape[0] == 1 else example
        dims = {**({0: torch.export.Dim("batch")} if dynamic_batch else {}),
                **({2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO} if dynamic_hw else {})}
        with _quiet_exporter():
            torch.onnx.export(net, (x,), path, dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_shapes=(dims,) if dims else None,
                              external_data=False, verbose=False)
        return
    batch = {0: "batch"} if dynamic_batch else {}
    axes = ({INPUT_NAME: {**batch, **({2: "height", 3: "width"} if dynamic_hw else {})},
             OUTPUT_NAME: {**batch, **({2: "out_height", 3: "out_width"} if dynamic_hw else {})}}
            if batch or dynamic_hw else None)
    with warnings.catch_warnings():
        for message in _LEGACY_DEPRECATIONS:
            warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
        torch.onnx.export(net, (example,), path, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes=axes)


def check_runs(model: nn.Module, example: torch.Tensor, label: str = "the model") -> None:
    """Dry-run ``model`` on ``example``: a model that cannot take the input is the caller's mistake, said in
    one line. Pass a copy when the model must not be touched (the run is in inference mode, but in ``model``'s
    own train/eval state)."""
    try:
        with torch.inference_mode():
            return model(example)
    except RuntimeError as exc:
        raise UserError(f"{label} cannot run on an input of shape {tuple(example.shape)}: "
                        f"{str(exc).splitlines()[0]}") from None


def check_finite(model: nn.Module, example: torch.Tensor, label: str = "the model") -> None:
    """Refuse a model with NaN/inf weights, or whose output on ``example`` is not finite: its ONNX file would
    load and run, and compute garbage. Also checks the input size (``check_image_size``) and that it runs."""
    from ganprune.models.sizes import check_image_size
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise UserError(f"{label} has non-finite weights (NaN or inf in {name}); refusing to export it")
    if example.dim() == 4:
        check_image_size(model, *example.shape[-2:], label)
    for out in _outputs(check_runs(model, example, label)):
        if not bool(torch.isfinite(out).all()):
            raise UserError(f"{label} gives non-finite outputs (NaN or inf) on the example input; refusing to "
                            "export it")


def input_channels(model: nn.Module) -> int:
    """Channels the network takes: those of its first convolution (registration order)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            return m.in_channels
    raise UserError(f"{type(model).__name__}: no Conv2d found to tell the input channels from")


def _max_diff(run, reference: nn.Module, inputs: list[torch.Tensor]) -> float:
    """Largest |runtime - torch| over ``inputs``, every output."""
    worst = 0.0
    with torch.inference_mode():
        for x in inputs:
            for got, want in zip(run(x.numpy()), _outputs(reference(x))):
                diff = float((torch.from_numpy(np.asarray(got)) - want).abs().max())
                worst = max(worst, diff) if diff == diff else float("inf")   # NaN from a runtime is no match
    return worst


def thread_candidates() -> list[int]:
    """1, 2, 4, ... up to the CPUs this process may use (at most 8: small nets gain nothing beyond)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return [t for t in (1, 2, 4, 8) if t <= max(1, min(cpus, 8))]


def choose_threads(path, example: torch.Tensor, candidates=None, warmup: int = 2, repeats: int = 7,
                   tolerance: float = 0.05) -> dict:
    """Time the model file on its runtime at each thread count (interleaved, batch 1) and pick the fewest
    threads whose median is within ``tolerance`` of the fastest: small pruned nets often gain nothing from
    more threads, and a thread left free is worth more to the rest of the device. Returns ``threads`` and
    ``latency_ms_by_threads``."""
    from ganprune.core.timing import interleaved
    from ganprune.deploy.runtimes import load_runner
    candidates = list(candidates or thread_candidates())
    x = example[:1].numpy()

    def runner(t):
        run = load_runner(path, t)
        return (str(t), str(t), lambda: run(x))
    if str(path).endswith(".pte"):  # one ExecuTorch thread count at a time (see runtimes._pte_runner)
        times = [interleaved([runner(t)], warmup, repeats, progress=False)[0] for t in candidates]
    else:
        times = interleaved([runner(t) for t in candidates], warmup, repeats, progress=False)
    ms = {t: float(np.median(s)) * 1e3 for t, s in zip(candidates, times)}
    best = min(ms.values())
    return {"threads": min(t for t in candidates if ms[t] <= best * (1 + tolerance)),
            "latency_ms_by_threads": {t: round(v, 3) for t, v in ms.items()}}


def _metadata(model: nn.Module, example: torch.Tensor, dynamic_batch: bool, dynamic_hw: bool, extra) -> dict:
    """What the file holds, as strings: version, input shape, and the pruned net's spec and widths."""
    from ganprune import __version__
    n, c, h, w = example.shape
    meta = {"ganprune_version": __version__,
            "input_shape": f"{'batch' if dynamic_batch else n}x{c}x{'height' if dynamic_hw else h}x"
                           f"{'width' if dynamic_hw else w}",
            "exported_at_size": f"{h}x{w}"}
    from ganprune.pruning.physical import pruned_info
    info = pruned_info(model)
    for key in ("spec", "widths"):
        value = getattr(info, key) if info is not None else None
        if value is not None:
            meta[key] = value
    meta.update(extra or {})
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str) for k, v in meta.items()}


def _write_onnx_metadata(path: str, meta: dict) -> None:
    import onnx
    proto = onnx.load(path, load_external_data=False)
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, path)


def export_onnx(model: nn.Module, path, example_input: torch.Tensor, opset: int = 17, dynamic_batch: bool = True,
                fold_bn: bool = True, check: bool = True, parity: bool = True, dynamic_hw: bool | None = None,
                images: torch.Tensor | None = None, metadata: dict | None = None, threads=None) -> dict:
    """Export ``model`` (in eval mode, on CPU, float32) to the ONNX file ``path``, written atomically.

    ``dynamic_hw``: None makes H and W dynamic when the net runs at a second size (``second_size``), True
    requires it, False keeps the example's H×W. ``images``: real images for the parity check (default:
    the example, or image-like inputs if it is constant). ``metadata``: extra ``metadata_props`` (e.g.
    source, stage) beside ganprune's version, the input shape and a pruned net's spec and widths.
    ``threads``: None leaves the thread count unrecorded, ``"auto"`` times the file at 1, 2, 4... threads
    and records the fastest (``choose_threads``), an int records that count.

    The input model is not modified. Returns ``path``, ``exporter`` ("dynamo" or "legacy"), ``opset``,
    ``bytes``, ``checker``, ``max_abs_diff`` (ONNX Runtime vs the unfolded torch model at batch 1 and 2 and
    at the second size when H and W are dynamic; None if not run), ``parity_input``, ``dynamic_hw``,
    ``checked_sizes``, ``threads``, ``latency_ms_by_threads``, ``metadata``, ``batchnorm_folded``, ``seconds``.
    """
    import onnx

    if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4:
        raise UserError("example_input: expected an N×C×H×W tensor")
    start = time.perf_counter()
    path = os.fspath(path)
    example = example_input.detach().to("cpu", torch.float32)
    reference = copy.deepcopy(model).to("cpu", torch.float32).eval()
    net = fold_batchnorm(reference) if fold_bn else reference
    check_finite(reference, example)
    other = second_size(reference, example) if dynamic_hw is not False else None
    if dynamic_hw and other is None:
        raise UserError(f"dynamic H and W: the model runs only at {tuple(example.shape[-2:])}; export it without")
    inputs, source = parity_inputs(example, dynamic_batch, images)
    if other is not None:
        inputs.append(torch.nn.functional.interpolate(inputs[0], size=other, mode="bilinear", align_corners=False))
    exporter = "dynamo" if dynamo_available() else "legacy"
    result = {"path": path, "format": "onnx", "exporter": exporter, "dynamic_hw": other is not None,
              "checked_sizes": sorted({tuple(x.shape[-2:]) for x in inputs}, reverse=True),
              "parity_input": source if parity else None, "threads": None, "latency_ms_by_threads": None}
    with atomic_path(path) as tmp:
        _export(net, example, tmp, opset, dynamic_batch, exporter, dynamic_hw=other is not None)
        proto = onnx.load(tmp, load_external_data=False)
        result["opset"] = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        del proto
        if threads == "auto":
            result.update(choose_threads(tmp, example))
        elif threads is not None:
            result["threads"] = int(threads)
        extra = {"exporter": exporter, "fold_bn": str(bool(fold_bn)), **(metadata or {})}
        if result["threads"] is not None:
            extra["threads"] = str(result["threads"])
        if result["latency_ms_by_threads"]:
            extra["latency_ms_by_threads"] = result["latency_ms_by_threads"]
        result["metadata"] = _metadata(reference, example, dynamic_batch, other is not None, extra)
        _write_onnx_metadata(tmp, result["metadata"])
        result["checker"] = None
        if check:
            onnx.checker.check_model(tmp, full_check=True)
            result["checker"] = True
        if parity:
            from ganprune.deploy.runtimes import load_runner
            result["max_abs_diff"] = _max_diff(load_runner(tmp, 1, "onnx"), reference, inputs)
        else:
            result["max_abs_diff"] = None
    result.update(bytes=os.path.getsize(path), batchnorm_folded=count_batchnorm(reference) - count_batchnorm(net),
                  fold_bn=fold_bn, dynamic_batch=dynamic_batch, seconds=time.perf_counter() - start)
    return result


def export_model(model: nn.Module, path, example_input: torch.Tensor, fmt: str | None = None, threads=None,
                 images: torch.Tensor | None = None, metadata: dict | None = None, **onnx_options) -> dict:
    """Export to ``fmt`` ("onnx", "openvino" or "pte"; default from ``path``'s extension) with the same
    checks and metadata as ``export_onnx``, parity measured on the target runtime itself.

    OpenVINO IR is converted from the checked ONNX export (dynamic axes kept; ``.bin`` written beside the
    ``.xml``). ExecuTorch ``.pte`` is lowered from the BN-folded torch model with XNNPACK, at the example's
    fixed shape, batch 1. Both keep their metadata in ``<path>.json`` (OpenVINO also in the IR's rt_info).
    """
    import tempfile

    from ganprune.deploy.runtimes import FORMATS, format_of, load_runner, require, write_openvino, write_pte
    fmt = fmt or format_of(path)
    if fmt != "onnx" and fmt in FORMATS and not os.fspath(path).lower().endswith(FORMATS[fmt]):
        # OpenVINO names its .bin after the .xml: checked before the runtime is imported, whether or not it is
        raise UserError(f"{os.fspath(path)}: --format {fmt} writes a file ending in {FORMATS[fmt]}; name it so")
    require(fmt)
    if fmt == "onnx":
        return export_onnx(model, path, example_input, threads=threads, images=images, metadata=metadata,
                           **onnx_options)
    start, path = time.perf_counter(), os.fspath(path)
    with tempfile.TemporaryDirectory(prefix="ganprune-export-") as workdir:
        tmp = os.path.join(workdir, "model" + os.path.splitext(path)[1])
        if fmt == "pte":
            onnx_options.update(dynamic_batch=False, dynamic_hw=False)
        result = export_onnx(model, os.path.join(workdir, "model.onnx"), example_input, images=images,
                             metadata=metadata, parity=False, **onnx_options)
        reference = copy.deepcopy(model).to("cpu", torch.float32).eval()
        example = example_input.detach().to("cpu", torch.float32)[:1]
        if fmt == "openvino":
            write_openvino(result["path"], tmp, result["metadata"])
        else:
            write_pte(fold_batchnorm(reference) if result["fold_bn"] else reference, example, tmp)
        if threads == "auto":
            result.update(choose_threads(tmp, example))
        elif threads is not None:
            result["threads"] = int(threads)
        meta = dict(result["metadata"], format=fmt)
        if result["threads"] is not None:
            meta["threads"] = str(result["threads"])
        if result["latency_ms_by_threads"]:
            meta["latency_ms_by_threads"] = json.dumps(result["latency_ms_by_threads"])
        inputs, source = parity_inputs(example, result["dynamic_batch"], images)
        if result["dynamic_hw"]:
            other = next(s for s in result["checked_sizes"] if s != tuple(example.shape[-2:]))
            inputs.append(torch.nn.functional.interpolate(inputs[0], size=other, mode="bilinear", align_corners=False))
        run = load_runner(tmp, result["threads"] or 1, fmt)  # the shipped count: ExecuTorch's pool is process-wide
        result.update(max_abs_diff=_max_diff(run, reference, inputs), parity_input=source,
                      metadata=meta, path=path, format=fmt)
        if fmt == "openvino":
            _move(os.path.splitext(tmp)[0] + ".bin", os.path.splitext(path)[0] + ".bin")
        _move(tmp, path)
        atomic_write_text(path + ".json", json.dumps(meta, indent=1, sort_keys=True) + "\n")
    extra = os.path.splitext(path)[0] + ".bin" if fmt == "openvino" else None   # the IR's weights
    result.update(bytes=os.path.getsize(path) + (os.path.getsize(extra) if extra else 0),
                  seconds=time.perf_counter() - start)
    return result


def _move(src: str, dst: str) -> None:
    """Copy ``src`` over ``dst`` atomically (they may be on different file systems)."""
    import shutil
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
