"""Round-robin timing of several models in one process: the one timing loop that latency measurement
and export's thread-count choice share (a module of its own so neither imports the other)."""
from __future__ import annotations

import gc
import time

import torch
from tqdm.auto import tqdm


def interleaved(runners, warmup: int, repeats: int, progress: bool, calls: int = 1) -> list[list[float]]:
    """Round-robin timing, starting each round one runner later so none always runs first. ``calls`` > 1
    calls each runner that many times in its turn and times the last: its weights are then in cache, as
    when one model runs alone, instead of evicted by the runner before it."""
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
                    for _ in range(calls - 1):
                        runners[i][2]()
                    start = time.perf_counter()
                    runners[i][2]()
                    elapsed = time.perf_counter() - start
                    if r >= warmup:
                        times[i].append(elapsed)
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def duration(seconds: float) -> str:
    """``seconds`` as a person reads it: 40 s, 3.5 min, 1.2 h."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Forecast:
    """One line, printed once, saying how long a loop of ``total`` units will take: measured on its first
    units (the very first, which pays for warm-up, only counted as spent), before the bulk of the work.
    Call ``tick()`` after each unit."""

    def __init__(self, label: str, total: int, unit: str = "step", enabled: bool = True, probe: int = 3):
        self.label, self.total, self.unit, self.probe = label, int(total), unit, probe
        self.enabled = enabled and self.total > probe + 1     # a loop that short is over before it is said
        self.done, self.began, self.first = 0, time.perf_counter(), None

    def tick(self) -> None:
        if not self.enabled:
            return
        self.done += 1
        now = time.perf_counter()
        if self.first is None:
            self.first = now
            return
        if self.done - 1 < self.probe:
            return
        pace = (now - self.first) / (self.done - 1)
        expected = now - self.began + pace * (self.total - self.done)
        tqdm.write(f"{self.label}: {self.total} {self.unit}s, expected to take about {duration(expected)} "
                   f"({pace:.3g} s/{self.unit} over {self.done - 1} {self.unit}s after the first)")
        self.enabled = False
