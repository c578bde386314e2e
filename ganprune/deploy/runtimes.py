"""Deployment runtimes for an exported generator: ONNX Runtime (always installed), OpenVINO and ExecuTorch
with XNNPACK (optional extras ``ganprune[openvino]`` / ``ganprune[executorch]``).

Each format has a writer (``write_openvino``, ``write_pte``; ONNX is ``ganprune.deploy.export.export_onnx``) and
one way to run a written file, ``load_runner(path, threads)``: a function from a float32 NCHW numpy array
to the list of outputs. The latency benchmark, the export's parity check and its thread choice all go
through it, so what is timed is what is shipped.
"""
from __future__ import annotations

import json
import os
from typing import Callable

import numpy as np

from ganprune.core.errors import UserError

FORMATS = {"onnx": ".onnx", "openvino": ".xml", "pte": ".pte"}
_PACKAGE = {"onnx": ("onnxruntime", "onnxruntime"), "openvino": ("openvino", "openvino"),
            "pte": ("executorch", "executorch")}


def available(fmt: str) -> bool:
    """Whether ``fmt``'s runtime package imports here."""
    import importlib.util
    return importlib.util.find_spec(_PACKAGE[_check_format(fmt)][0]) is not None


def require(fmt: str) -> None:
    """One line naming the extra to install when ``fmt``'s runtime is missing."""
    if not available(fmt):
        module, extra = _PACKAGE[fmt]
        raise UserError(f"--format {fmt}: needs the {module} package (pip install 'ganprune[{extra}]')")


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return fmt


def format_of(path) -> str:
    """The format a file's extension says (``.onnx``, ``.xml`` for OpenVINO IR, ``.pte``)."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    for fmt, e in FORMATS.items():
        if ext == e:
            return fmt
    raise UserError(f"{path}: unknown model file extension; expected {', '.join(FORMATS.values())}")


# --------------------------------------------------------------------------- writers

def write_openvino(onnx_path, xml_path, metadata: dict | None = None) -> None:
    """Convert an exported ONNX file to OpenVINO IR (``.xml`` + ``.bin`` beside it), float32 weights.

    The ONNX file already has BatchNorm folded and dynamic axes; OpenVINO keeps both. ``metadata`` goes
    into the IR's runtime info under ``ganprune``."""
    import openvino as ov
    from ganprune.core.io import atomic_path
    model = ov.convert_model(os.fspath(onnx_path))
    for key, value in (metadata or {}).items():
        model.set_rt_info(str(value), ["ganprune", key])
    xml_path = os.fspath(xml_path)
    bin_path = os.path.splitext(xml_path)[0] + ".bin"
    with atomic_path(xml_path) as tmp_xml:
        # save_model names the .bin after the .xml: write both under the temporary name, then move the .bin.
        ov.save_model(model, tmp_xml, compress_to_fp16=False)
        tmp_bin = os.path.splitext(tmp_xml)[0] + ".bin"
        os.replace(tmp_bin, bin_path)


def write_pte(net, example, path) -> None:
    """Lower ``net`` (eval, float32, BatchNorm already folded) to an ExecuTorch program with every op
    XNNPACK supports delegated to it; the input shape is fixed to ``example``'s."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from ganprune.core.io import atomic_path
    with torch.no_grad():
        program = torch.export.export(net, (example,))
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    with atomic_path(os.fspath(path)) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(lowered.buffer)


# --------------------------------------------------------------------------- runners

def load_runner(path, threads: int | None = None, fmt: str | None = None, optimization: str = "all") -> Callable:
    """``run(x) -> [outputs]`` for the model file ``path`` on its runtime with ``threads`` intra-op threads
    (default: the count chosen at export and recorded in the file's metadata, else 1)."""
    fmt = _check_format(fmt or format_of(path))
    require(fmt)
    if not os.path.isfile(os.fspath(path)):
        raise UserError(f"{path}: model file not found")
    if threads is None:
        threads = recorded_threads(path) or 1
    return {"onnx": _onnx_runner, "openvino": _openvino_runner, "pte": _pte_runner}[fmt](path, threads, optimization)


def _onnx_runner(path, threads: int, optimization: str) -> Callable:
    session = ort_session(path, threads=threads, optimization=optimization)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})


def _openvino_runner(path, threads: int, _optimization: str) -> Callable:
    import openvino as ov
    core = ov.Core()
    # f32 precision: on CPUs with bf16 units OpenVINO would otherwise compute in bf16 (parity off by 1e-2).
    compiled = core.compile_model(os.fspath(path), "CPU", {"INFERENCE_NUM_THREADS": int(threads),
                                                           "PERFORMANCE_HINT": "LATENCY",
                                                           "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()

    def run(x):
        result = request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return [np.asarray(result[o]) for o in compiled.outputs]
    return run


_PTE_POOL = {"generation": 0}


def _pte_runner(path, threads: int, _optimization: str) -> Callable:
    """XNNPACK's thread pool is process-wide, and a program keeps the pool it was loaded with: resizing it
    (loading a runner with another thread count) frees that pool, so older runners refuse to run
    instead of crashing."""
    import torch
    from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count, _unsafe_reset_threadpool
    from executorch.runtime import Runtime
    if _threadpool_get_thread_count() != int(threads):
        _unsafe_reset_threadpool(int(threads))
        _PTE_POOL["generation"] += 1
    generation = _PTE_POOL["generation"]
    method = Runtime.get().load_program(os.fspath(path)).load_method("forward")

    def run(x):
        if _PTE_POOL["generation"] != generation:
            raise RuntimeError(f"{path}: ExecuTorch runner for {threads} threads is stale (another thread count "
                               "was loaded since); load it again")
        return [o.numpy() for o in method.execute([torch.from_numpy(np.ascontiguousarray(x, np.float32))])]
    return run


def ort_session(path, threads: int | None = None, optimization: str = "all"):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (default: torch's count).

    Spinning is off: idle ORT threads that spin steal cores from torch running in the same process.
    ``optimization`` is ORT's graph optimisation level: "disable", "basic", "extended" or "all".
    """
    import onnxruntime as ort
    import torch
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


def read_metadata(path) -> dict:
    """The ganprune metadata of an exported file: ONNX metadata_props, or the ``.json`` beside a
    ``.pte`` / OpenVINO ``.xml`` file."""
    path = os.fspath(path)
    if path.endswith(".onnx"):
        import onnx
        return {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    try:
        with open(path + ".json", encoding="utf-8") as fh:
            return json.load(fh)
    except OSError:
        return {}


def recorded_threads(path) -> int | None:
    """The thread count chosen at export (``threads`` in the file's metadata), or None."""
    value = read_metadata(path).get("threads")
    return int(value) if value not in (None, "") else None
