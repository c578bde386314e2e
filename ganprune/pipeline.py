"""The stages a user runs, wired from plain options: load the teacher pair → search widths.

The CLI and the Python API both call these; each stage takes the previous stage's outputs.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ganprune.errors import UserError


def load_pair(teacher_dir=None, generator=None, discriminator=None, g_spec: dict | None = None,
              d_spec: dict | None = None) -> tuple[nn.Module, nn.Module, dict, dict]:
    """The dense teacher pair and the options that build it: from a ``train-teacher`` folder, or from two
    reference-format checkpoints plus their build options (``g_spec``/``d_spec``, e.g. ``{"arch": "unet_256"}``)."""
    if teacher_dir:
        from ganprune.teacher import load_teacher
        G, D, spec = load_teacher(teacher_dir)
        return G, D, dict(spec["G"]), dict(spec["D"])
    if not generator or not discriminator:
        raise UserError("give a teacher folder (--teacher) or both --generator and --discriminator checkpoints")
    from ganprune.models import load_discriminator, load_generator
    g_spec, d_spec = dict(g_spec or {}), dict(d_spec or {})
    return (load_generator(generator, **g_spec).eval(), load_discriminator(discriminator, **d_spec).eval(),
            g_spec, d_spec)


def _first_conv_in_channels(net: nn.Module) -> int:
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise UserError(f"{type(net).__name__}: discriminator has no Conv2d layer")


def build_evaluator(G, D, batches, g_space=None, d_space=None, g_spec=None, d_spec=None, *, embedding="pixels",
                    m=8, discrepancy="mmd", perturbations=("noise",), l1_weight=0.0, balance_weight=1.0,
                    g_space_file=None, d_space_file=None, importance="l2", recalibrate_bn=True, seed=0):
    """Search spaces (from the dependency graph + search_spaces YAML), objective and evaluator."""
    from ganprune.evaluate import CandidateEvaluator
    from ganprune.objective import LocalDensityObjective
    from ganprune.space import SearchSpace
    x = batches[0]["A"][:1]
    y = batches[0]["B"][:1]
    conditional = _first_conv_in_channels(D) == x.shape[1] + y.shape[1]
    d_x = torch.cat([x, y], 1) if conditional else y
    g_arch = (g_spec or {}).get("arch")
    d_arch = (d_spec or {}).get("arch")
    g_space = g_space or SearchSpace.from_model(G, x, arch=g_arch if g_arch and ":" not in g_arch else None,
                                                config=g_space_file)
    d_space = d_space or SearchSpace.from_model(D, d_x, arch=d_arch if d_arch and ":" not in d_arch else None,
                                                config=d_space_file)
    objective = LocalDensityObjective(G, embedding=embedding, m=m, perturbations=tuple(perturbations),
                                      discrepancy=discrepancy, teacher_D=D, seed=seed)
    return CandidateEvaluator(G, D, g_space, d_space, batches, objective, conditional_D=conditional,
                              l1_weight=l1_weight, balance_weight=balance_weight, recalibrate_bn=recalibrate_bn,
                              importance=importance)


def run_search(G, D, g_spec, d_spec, dataroot, out=None, *, mode="aligned", direction="AtoB", size=None,
               phase="train", calib_images=16, calib_batch=8, g_budget=0.25, d_budget=0.5, g_agent="greedy",
               d_agent="greedy", agent_file=None, g_agent_options=None, d_agent_options=None, rounds=60, seed=0,
               on_agent_error="stop", progress=True, **evaluator_options):
    """Collaborative search on the ``phase`` split of ``dataroot``; with ``out``, resumable and written there."""
    from ganprune.agent import get_agent
    from ganprune.evaluate import calibration_batches
    from ganprune.search import resolve_budget, search
    torch.manual_seed(seed)
    batches = calibration_batches(dataroot, phase=phase, n_images=calib_images, batch_size=calib_batch,
                                  mode=mode, direction=direction, size=size)
    evaluator = build_evaluator(G, D, batches, g_spec=g_spec, d_spec=d_spec, seed=seed, **evaluator_options)
    g_full, d_full = evaluator.g_space.full_widths(), evaluator.d_space.full_widths()
    g_max = resolve_budget(g_budget, evaluator.g_space.macs(g_full))
    d_max = resolve_budget(d_budget, evaluator.d_space.macs(d_full))
    g = get_agent(g_agent, agent_file)(evaluator.g_space, g_max, seed=seed, role="G", **(g_agent_options or {}))
    d = get_agent(d_agent, agent_file)(evaluator.d_space, d_max, seed=seed + 1, role="D", **(d_agent_options or {}))
    if out:
        os.makedirs(out, exist_ok=True)
    result = search(evaluator, g, d, g_max, d_max, rounds=rounds, out_dir=out, on_agent_error=on_agent_error,
                    progress=progress, g_spec=g_spec, d_spec=d_spec)
    result.evaluator = evaluator
    return result
