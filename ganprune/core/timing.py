"""Round-robin timing of several models in one process: the one timing loop that latency measurement
and export's thread-count choice share (a module of its own so neither imports the other)."""
from __future__ import annotations

import gc
import time

import torch
from tqdm.auto import tqdm


def interleaved(runners, warmup: int, repeats: int, progress: bool) -> list[list[float]]:
    """Round-robin timing, starting each round one runner later so none always runs first."""
    times: list[list[float]] = [[] for _ in runners]
    n = len(runners)
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection inside one timed call would charge it to whichever model ran then
    try:
        with torch.inference_mode():
            for r in tqdm(range(warmup + repeats), desc="latency", unit="round", disable=not progress, leave=False):
                for k in range(n):
                    i = (k + r) % n
                    start = time.perf_counter()
                    runners[i][2]()
                    elapsed = time.perf_counter() - start
                    if r >= warmup:
                        times[i].append(elapsed)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times
