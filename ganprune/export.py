"""ONNX export with the checks a deployment needs: valid graph, dynamic batch, same numbers as torch.

torch 2.13's default exporter (``dynamo=True``) needs the optional ``onnxscript`` package; without it
the TorchScript-based legacy exporter is used (its deprecation warning is silenced, nothing else).
BatchNorm is folded into the convs first by default (``ganprune.fuse``), so the graph has none whatever
the exporter does; torch 2.13's exporters, legacy and dynamo, happen to fold eval-mode BatchNorm
themselves too. The check compares ONNX Runtime against the *unfolded* torch model, so it covers the
folding as well as the export.
"""
from __future__ import annotations

import copy
import os
import time
import warnings

import torch
from torch import nn

from ganprune.errors import UserError
from ganprune.fuse import count_batchnorm, fold_batchnorm
from ganprune.io import atomic_path

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


def _batches(example: torch.Tensor, dynamic_batch: bool) -> list[torch.Tensor]:
    """Inputs for the parity check: batch 1 and batch 2 (two different images) when the batch is dynamic."""
    if not dynamic_batch:
        return [example]
    one = example[:1]
    return [one, torch.cat([one, one.flip(-1)], 0)]


def _export(net: nn.Module, example: torch.Tensor, path: str, opset: int, dynamic_batch: bool, exporter: str) -> None:
    if exporter == "dynamo":
        # torch.export specialises a size-1 dimension, so trace a dynamic batch with two samples.
        x = _batches(example, True)[1] if dynamic_batch and example.shape[0] == 1 else example
        dynamic = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
        torch.onnx.export(net, (x,), path, dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_shapes=dynamic, external_data=False, verbose=False)
        return
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
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


def ort_session(path, threads: int | None = None, optimization: str = "all"):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (default: torch's count).

    Spinning is off: idle ORT threads that spin steal cores from torch running in the same process.
    ``optimization`` is ORT's graph optimisation level: "disable", "basic", "extended" or "all".
    """
    import onnxruntime as ort
    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if optimization not in levels:
        raise UserError(f"ORT optimization {optimization!r}: expected one of {', '.join(levels)}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = levels[optimization]
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(os.fspath(path), sess_options=opts, providers=["CPUExecutionProvider"])


def _parity(path: str, reference: nn.Module, inputs: list[torch.Tensor]) -> float | None:
    try:
        session = ort_session(path)
    except ImportError:
        return None
    worst = 0.0
    with torch.inference_mode():
        for x in inputs:
            got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
            want = _outputs(reference(x))
            for g, w in zip(got, want):
                diff = float((torch.from_numpy(g) - w).abs().max())
                worst = max(worst, diff) if diff == diff else float("inf")   # NaN from ORT is no match
    return worst


def export_onnx(model: nn.Module, path, example_input: torch.Tensor, opset: int = 17, dynamic_batch: bool = True,
                fold_bn: bool = True, check: bool = True, parity: bool = True) -> dict:
    """Export ``model`` (in eval mode, on CPU, float32) to the ONNX file ``path``, written atomically.

    The input model is not modified. Returns ``path``, ``exporter`` ("dynamo" or "legacy"), ``opset``
    (the file's; the dynamo exporter may keep a newer one if it cannot convert down), ``bytes``,
    ``checker`` (``onnx.checker`` passed, or None if not run), ``max_abs_diff`` (ONNX Runtime vs the
    unfolded torch model at batch 1 and 2, or None if not run / onnxruntime missing),
    ``batchnorm_folded`` and ``seconds``.
    """
    import onnx

    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1:
        raise UserError("example_input: expected a tensor whose first dimension is the batch")
    start = time.perf_counter()
    path = os.fspath(path)
    example = example_input.detach().to("cpu", torch.float32)
    reference = copy.deepcopy(model).to("cpu", torch.float32).eval()
    net = fold_batchnorm(reference) if fold_bn else reference
    check_finite(reference, example)
    exporter = "dynamo" if dynamo_available() else "legacy"
    result = {"path": path, "exporter": exporter}
    with atomic_path(path) as tmp:
        _export(net, example, tmp, opset, dynamic_batch, exporter)
        proto = onnx.load(tmp, load_external_data=False)
        result["opset"] = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        del proto
        result["checker"] = None
        if check:
            onnx.checker.check_model(tmp, full_check=True)
            result["checker"] = True
        result["max_abs_diff"] = _parity(tmp, reference, _batches(example, dynamic_batch)) if parity else None
    result.update(bytes=os.path.getsize(path), batchnorm_folded=count_batchnorm(reference) - count_batchnorm(net),
                  fold_bn=fold_bn, dynamic_batch=dynamic_batch, seconds=time.perf_counter() - start)
    return result
