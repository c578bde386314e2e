"""``ganprune demo``'s pruning half: the settings the demo prunes its cached teacher with, and the run.

The teacher half (``demo_teacher``, its presets and cache folder) lives with teacher training in
``ganprune.train.teacher``; the demo data set is built by ``ganprune.data.demo``.
"""
from __future__ import annotations

import os

from ganprune.pipeline import run_pipeline

# What `ganprune demo` prunes its teacher with: G to 25% of its MACs, D to 50%, greedy G/D agents, the
# density objective and recipe. Sized so that the full demo (teacher included) stays under ~10 minutes on
# 2 CPU cores and --quick under ~2 (measured run times: docs/benchmarks.md). Fine-tuning is short: the winner
# starts from its supernet slice, already distilled from the teacher, and the density recipe's GAN + ground-truth
# L1 move it away from the teacher the longer it runs on this set (docs/benchmarks.md, "The demo never ships worse").
DEMO_PRUNE = {
    "quick": {"rounds": 30, "calib_images": 8, "finetune_steps": 60, "fid": False, "eval_images": None,
              "supernet_steps": 40},
    "default": {"rounds": 60, "calib_images": 16, "finetune_steps": 30, "fid": True, "eval_images": None,
                "supernet_steps": 300},
}


def demo_pipeline(teacher: dict, quick: bool = False, out=None, progress: bool = True) -> dict:
    """Prune a ``demo_teacher`` result (``teacher``) with the pipeline into ``out`` (default: beside it)."""
    settings = DEMO_PRUNE["quick" if quick else "default"]
    out = out or os.path.join(os.path.dirname(os.fspath(teacher["out"])),
                              "pruned_" + os.path.basename(os.fspath(teacher["out"])).removeprefix("teacher_"))
    config = {"teacher": os.fspath(teacher["out"]), "dataroot": os.fspath(teacher["dataroot"]), "g_budget": 0.25,
              "d_budget": 0.5, "g_agent": "greedy", "d_agent": "greedy", "recipe": "density", "latency": True,
              **settings}
    return run_pipeline(config, out, progress=progress)
