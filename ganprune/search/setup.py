"""From a teacher pair and a dataset to a running search: calibration batches → search spaces →
budgets → objective and candidate evaluator → agents, built once by ``prepare``. ``ganprune search``, the
pipeline (its search, adopted widths and prune stages), every NNI trial, the NNI tuner and the NNI
experiment driver all call it, so they score and budget the same candidates the same way."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from ganprune.core.errors import UserError
from ganprune.core.guard import DEFAULT_TIMEOUT


def build_spaces(G, D, batches, g_spec=None, d_spec=None, g_space_file=None, d_space_file=None,
                 g_space=None, d_space=None):
    """``(g_space, d_space, conditional)``: the search spaces of both nets (given ones pass through) and
    whether D sees cat(A, B) (conditional) or B alone: the D spec's fact (``conditional_d``). Without a teacher
    D (``D`` None: G-only pruning) ``d_space`` is None and nothing about D is searched."""
    from ganprune.models.registry import conditional_d, d_input
    from ganprune.models.sizes import check_image_size
    from ganprune.pruning.space import SearchSpace
    x, y = batches[0]["A"][:1], batches[0]["B"][:1]
    check_image_size(G, *x.shape[-2:], f"generator {(g_spec or {}).get('arch') or type(G).__name__!r}")
    g_arch, d_arch = (g_spec or {}).get("arch"), (d_spec or {}).get("arch")
    g_space = g_space or SearchSpace.from_model(G, x, arch=g_arch if g_arch and ":" not in g_arch else None,
                                                config=g_space_file)
    if D is None:
        return g_space, None, False
    conditional = conditional_d(d_spec, D, x.shape[1], y.shape[1])
    d_space = d_space or SearchSpace.from_model(D, d_input(x, y, conditional),
                                                arch=d_arch if d_arch and ":" not in d_arch else None,
                                                config=d_space_file)
    return g_space, d_space, conditional


def build_evaluator(G, D, batches, g_space=None, d_space=None, g_spec=None, d_spec=None, *, embedding="pixels",
                    m=8, discrepancy="mmd", perturbations=("noise",), l1_weight=0.0, balance_weight=1.0,
                    g_space_file=None, d_space_file=None, importance="l2", recalibrate_bn=True, seed=0):
    """Search spaces (from the dependency graph + search_spaces YAML), objective and evaluator (G alone
    when ``D`` is None)."""
    from ganprune.scoring.objective import LocalDensityObjective
    if D is None and embedding == "teacher_d":
        raise UserError("embedding teacher_d needs the teacher's discriminator; without --discriminator use "
                        "pixels or inception")
    from ganprune.scoring.candidates import CandidateEvaluator
    g_space, d_space, conditional = build_spaces(G, D, batches, g_spec, d_spec, g_space_file, d_space_file,
                                                 g_space, d_space)
    objective = LocalDensityObjective(G, embedding=embedding, m=m, perturbations=tuple(perturbations),
                                      discrepancy=discrepancy, teacher_D=D, conditional_D=conditional, seed=seed)
    return CandidateEvaluator(G, D, g_space, d_space, batches, objective, conditional_D=conditional,
                              l1_weight=l1_weight, balance_weight=balance_weight, recalibrate_bn=recalibrate_bn,
                              importance=importance)


def check_reachable(budget, role: str, option: str) -> None:
    """A budget below the smallest widths the space allows is refused before anything runs, in one line
    that says the smallest reachable cost."""
    smallest = {g.name: min(g.choices) for g in budget.space.groups}
    low = budget.cost(smallest)
    if low > budget.limit:
        unit = "ms" if budget.unit == "ms" else "MACs"
        raise UserError(f"{option}: {role} cannot get under {budget.limit:,.4g} {unit} in this search space; the "
                        f"smallest reachable is {low:,.4g} {unit} ({100 * low / budget.full:.1f}% of dense): "
                        f"raise {option} or give a search space with smaller width choices")


DEFAULT_MIN_ROUNDS = 60


def default_rounds(g_agent, d_agent=None) -> int:
    """Rounds when none are given: enough for both agents to reach their budgets and refine after
    (each agent's ``rounds_hint()``, e.g. greedy's ≈ (groups + 1) × shrink rounds + refine moves), and at
    least ``DEFAULT_MIN_ROUNDS``. The search also runs on past them while no pair fits yet (see
    ``CollaborativeSearch``), so a default run ends with a winner whenever the budgets are reachable."""
    hints = [a.rounds_hint() for a in (g_agent, d_agent) if a is not None]
    return max([DEFAULT_MIN_ROUNDS, *[int(h) for h in hints if h]])


def supernet_cap(g_space, g_budget) -> float | None:
    """The MACs cap of the supernet's random slices, a fraction of G's: 1.2× the MACs budget (capacity goes
    where the search looks), the largest one of a list (a family); None (uncapped) when a budget is a latency."""
    from ganprune.search.budget import is_latency, resolve_macs
    budgets = g_budget if isinstance(g_budget, (list, tuple)) else [g_budget]
    if any(is_latency(b) for b in budgets):
        return None
    full = g_space.macs(g_space.full_widths())
    return min(1.0, round(1.2 * max(resolve_macs(b, full) for b in budgets) / full, 4))


def attach_supernet(evaluator, G, dataroot, out=None, *, steps, g_budget=0.25, mode="aligned", direction="AtoB",
                    size=None, phase="train", seed=0, progress=True, folder=None, cap="auto", lambda_gan=0.0):
    """Train (or, from ``folder``, default ``out/supernet``, reload) the supernet whose slices the evaluator then
    scores; nothing when ``steps`` is 0 (a count, or a duration such as "20min": ``train_supernet``). Random
    slices are capped by ``supernet_cap(g_budget)`` unless ``cap`` (a fraction or None) says otherwise (a family
    reuses the cap its supernet was trained with). ``lambda_gan`` > 0 trains a copy of the evaluator's teacher D
    against the slices. Returns the supernet or None."""
    from ganprune.core.options import check_steps
    if not check_steps(steps, "supernet_steps"):
        return None
    if lambda_gan and evaluator.teacher_D is None:
        raise UserError("supernet_lambda_gan: the adversarial term trains a copy of the teacher's discriminator; "
                        "give --discriminator or set it to 0")
    from ganprune.data.datasets import build_dataset
    from ganprune.search.supernet import train_supernet
    cap = supernet_cap(evaluator.g_space, g_budget) if cap == "auto" else cap
    folder = folder or (os.path.join(out, "supernet") if out else None)
    data = build_dataset(dataroot, mode=mode, phase=phase, direction=direction, load_size=size, crop_size=size)
    gan = dict(lambda_gan=lambda_gan, teacher_D=evaluator.teacher_D,
               conditional_D=evaluator.conditional_D) if lambda_gan else {}
    supernet = train_supernet(G, evaluator.g_space, data, folder,
                              steps=steps, ranking=evaluator.g_ranking, max_macs=cap, seed=seed,
                              device=evaluator.device, progress=progress, **gan)
    evaluator.use_supernet(supernet)
    return supernet


@dataclass
class SearchSetup:
    """One search's parts, as ``prepare`` builds them: the teacher pair, the calibration batches, both
    search spaces, whether D sees cat(A, B), the budgets (``Budget``; D's None when G is searched alone),
    the candidate evaluator and the agents (None where not asked for)."""
    G: Any
    D: Any
    g_spec: dict | None
    d_spec: dict | None
    batches: list
    g_space: Any
    d_space: Any
    conditional: bool
    g_budget: Any
    d_budget: Any
    evaluator: Any = None
    g_agent: Any = None
    d_agent: Any = None


def prepare(G, D, g_spec, d_spec, dataroot, out=None, *, mode, direction, size, phase, calib_images, calib_batch,
            seed, g_budget, d_budget, g_agent, d_agent, agent_file, g_agent_options, d_agent_options,
            latency_table, latency_backend, latency_threads, evaluator=True, agents=True, progress=True,
            **scoring) -> SearchSetup:
    """Calibration batches → search spaces → budgets → candidate evaluator → agents, the one way every
    search step builds them; ``evaluator``/``agents`` False leave those out (the NNI tuner needs no
    evaluator, a trial and the prune stage no agents). Budgets as ``parse_budget`` reads them, each checked
    reachable in the space before anything costly runs; a "…ms" budget times the net once into
    ``out/latency_<G|D>.yaml`` (reused by reruns; ``latency_table`` names a saved table for G instead).
    Agents are made by ``make_agent`` (a plugin's constructor runs guarded), D's with ``seed + 1``.
    ``scoring``: ``build_evaluator``'s keywords."""
    from ganprune.models.registry import d_input
    from ganprune.scoring.candidates import calibration_batches
    from ganprune.search.agent import make_agent
    from ganprune.search.budget import latency_table as build_table
    from ganprune.search.budget import parse_budget
    torch.manual_seed(seed)
    batches = calibration_batches(dataroot, phase=phase, n_images=calib_images, batch_size=calib_batch, mode=mode,
                                  direction=direction, size=size)
    if not batches:
        raise UserError(f"{dataroot}: no {phase} images for calibration")
    g_space, d_space, conditional = build_spaces(G, D, batches, g_spec, d_spec, scoring.pop("g_space_file", None),
                                                 scoring.pop("d_space_file", None))
    x, y = batches[0]["A"][:1], batches[0]["B"][:1]

    def table(net, space, example, name, given=None):
        path = given or (os.path.join(out, f"latency_{name}.yaml") if out else None)
        return lambda: build_table(net, space, example, path, latency_backend, latency_threads, progress)

    g_max = parse_budget(g_budget, g_space, table(G, g_space, x, "G", latency_table))
    check_reachable(g_max, "G", "g_budget")
    d_max = None
    if d_space is not None:
        d_max = parse_budget(d_budget, d_space, table(D, d_space, d_input(x, y, conditional), "D"))
        check_reachable(d_max, "D", "d_budget")
    s = SearchSetup(G, D, g_spec, d_spec, batches, g_space, d_space, conditional, g_max, d_max)
    if evaluator:
        s.evaluator = build_evaluator(G, D, batches, g_space, d_space, g_spec, d_spec, seed=seed, **scoring)
    if agents:
        s.g_agent = make_agent(g_agent, g_space, g_max, seed, "G", agent_file, **(g_agent_options or {}))
        if d_space is not None:
            s.d_agent = make_agent(d_agent, d_space, d_max, seed + 1, "D", agent_file, **(d_agent_options or {}))
    return s


# The resolved search options (``ganprune search``, ``prune`` and ``nni`` all hold them) ``prepare`` takes.
_PREPARE_OPTIONS = ("mode", "direction", "size", "phase", "calib_images", "calib_batch", "seed", "g_budget",
                    "d_budget", "g_agent", "d_agent", "agent_file", "g_agent_options", "d_agent_options",
                    "latency_table", "latency_backend", "latency_threads")


def prepare_from_options(o: Mapping, G, D, g_spec, d_spec, out=None, **flags) -> SearchSetup:
    """``prepare`` from resolved search options ``o``; ``flags``: ``evaluator``, ``agents``, ``progress``."""
    from ganprune.core.options import evaluator_keywords
    return prepare(G, D, g_spec, d_spec, o["dataroot"], out, **{k: o[k] for k in _PREPARE_OPTIONS},
                   **evaluator_keywords(o), **flags)


def run_search(G, D, g_spec, d_spec, dataroot, out=None, *, mode="aligned", direction="AtoB", size=None,
               phase="train", calib_images=16, calib_batch=8, g_budget=0.25, d_budget=0.5, g_agent="template",
               d_agent="template", agent_file=None, g_agent_options=None, d_agent_options=None, rounds=None, seed=0,
               on_agent_error="stop", fill=True, latency_table=None, latency_backend="onnxruntime",
               latency_threads=2, progress=True, agent_timeout=DEFAULT_TIMEOUT, supernet_steps=300,
               supernet_lambda_gan=0.0, finalists=0, finalist_steps=60, supernet_dir=None, supernet_cap="auto",
               **evaluator_options):
    """Collaborative search on the ``phase`` split of ``dataroot``; with ``out``, resumable and written there.

    Budgets as ``ganprune.search.budget.parse_budget`` reads them; a "…ms" budget times the network once into a
    ``LatencyTable`` (``latency_backend``, ``latency_threads``), kept as ``out/latency_<G|D>.yaml`` and
    reused by reruns; ``latency_table`` names a saved table to use for G instead; ``agent_timeout``: seconds
    one agent call may take (0: no limit); ``supernet_steps`` (a count > 0 or a duration such as "20min")
    first trains a weight-sharing supernet (``attach_supernet``, kept in ``out/supernet`` or ``supernet_dir``, its
    slices capped as ``supernet_cap`` says; ``supernet_lambda_gan`` > 0 adds its adversarial term) and scores G
    candidates as its slices; ``finalists`` > 0:
    the best few are distilled ``finalist_steps`` steps on the ``phase`` split and scored again
    (``ganprune.search.finalists``)."""
    from ganprune.search.loop import search
    s = prepare(G, D, g_spec, d_spec, dataroot, out, mode=mode, direction=direction, size=size, phase=phase,
                calib_images=calib_images, calib_batch=calib_batch, seed=seed, g_budget=g_budget, d_budget=d_budget,
                g_agent=g_agent, d_agent=d_agent, agent_file=agent_file, g_agent_options=g_agent_options,
                d_agent_options=d_agent_options, latency_table=latency_table, latency_backend=latency_backend,
                latency_threads=latency_threads, progress=progress, **evaluator_options)
    evaluator, g, d, g_max, d_max = s.evaluator, s.g_agent, s.d_agent, s.g_budget, s.d_budget
    if D is None and progress:
        print("G-only search: no discriminator checkpoint, so only G is scored and pruned (the balance and D "
              "terms are 0, no D-agent); fine-tuning trains a fresh D", flush=True)
    # the budgets are checked above, before the supernet (minutes) is trained
    attach_supernet(evaluator, G, dataroot, out, steps=supernet_steps, g_budget=g_budget, mode=mode,
                    direction=direction, size=size, phase=phase, seed=seed, progress=progress, folder=supernet_dir,
                    cap=supernet_cap, lambda_gan=supernet_lambda_gan)
    distiller = None
    if finalists:
        from ganprune.data.datasets import build_dataset
        from ganprune.search.finalists import Distiller
        data = build_dataset(dataroot, mode=mode, phase=phase, direction=direction, load_size=size, crop_size=size)
        distiller = Distiller(G, data, steps=finalist_steps, seed=seed)
    max_rounds = None
    if rounds is None:   # sized from the agents and the space; on past it while nothing fits yet
        rounds = default_rounds(g, d)
        max_rounds = 4 * rounds
    if out:
        os.makedirs(out, exist_ok=True)
    result = search(evaluator, g, d, g_max, d_max, rounds=rounds, out_dir=out, on_agent_error=on_agent_error,
                    progress=progress, g_spec=g_spec, d_spec=d_spec, fill=fill, seed=seed, agent_timeout=agent_timeout,
                    max_rounds=max_rounds, finalists=finalists, distiller=distiller)
    result.evaluator = evaluator
    return result
