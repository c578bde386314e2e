"""CPU threading, set by ganprune rather than left to whatever the environment holds.

On a busy machine OpenMP's default (threads spin while waiting) starves everything else and made training
many times slower than passive waiting or one thread (measured: docs/benchmarks.md, CPU threads). OpenMP
reads these variables once, when torch loads, so the CLI calls ``configure`` before anything imports torch.
Defaults: passive waiting, and one thread per physical core this process may run on (hyper-threads share a
core's arithmetic units and only add contention). A value the user exported wins, except over
``--threads``, which always does.
"""
from __future__ import annotations

import os
import sys


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (logical CPUs when that cannot be read)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = list(range(os.cpu_count() or 1))
    cores = set()
    try:
        for cpu in allowed:
            base = f"/sys/devices/system/cpu/cpu{cpu}/topology"
            with open(f"{base}/core_id") as fh:
                core = fh.read().strip()
            with open(f"{base}/physical_package_id") as fh:
                cores.add((fh.read().strip(), core))
    except OSError:
        return max(1, len(allowed))
    return max(1, len(cores))


def configure(threads: int | None = None) -> int:
    """Set ``OMP_WAIT_POLICY`` (PASSIVE unless exported) and the thread count (``threads``, else an
    exported ``OMP_NUM_THREADS``, else ``physical_cores()``); returns the thread count. Call it before torch
    is imported; if torch is loaded already, its intra-op pool is resized too."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads is None:
        exported = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(exported) if exported.isdigit() and int(exported) > 0 else physical_cores()
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("MKL_NUM_THREADS", str(threads))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return threads
