"""From a teacher pair and a dataset to a running search: calibration batches → search spaces →
objective and candidate evaluator → budgets and agents. The pipeline, ``ganprune search`` and every NNI
step build these the same way, here."""
from __future__ import annotations

import os

import torch

from ganprune.core.errors import UserError
from ganprune.core.guard import DEFAULT_TIMEOUT


def build_spaces(G, D, batches, g_spec=None, d_spec=None, g_space_file=None, d_space_file=None,
                 g_space=None, d_space=None):
    """``(g_space, d_space, conditional)``: the search spaces of both nets (given ones pass through) and
    whether D sees cat(A, B) (conditional) or B alone: the D spec's fact (``conditional_d``). Without a teacher
    D (``D`` None: G-only pruning) ``d_space`` is None and nothing about D is searched."""
    from ganprune.models.registry import conditional_d
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
    d_x = torch.cat([x, y], 1) if conditional else y
    d_space = d_space or SearchSpace.from_model(D, d_x, arch=d_arch if d_arch and ":" not in d_arch else None,
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


def calibration(dataroot, *, phase="train", calib_images=16, calib_batch=8, mode="aligned", direction="AtoB",
                size=None, seed=0):
    """The seeded calibration batches every search step scores candidates on."""
    from ganprune.scoring.candidates import calibration_batches
    torch.manual_seed(seed)
    return calibration_batches(dataroot, phase=phase, n_images=calib_images, batch_size=calib_batch, mode=mode,
                               direction=direction, size=size)


def attach_supernet(evaluator, G, dataroot, out=None, *, steps, g_budget=0.25, mode="aligned", direction="AtoB",
                    size=None, phase="train", seed=0, progress=True):
    """Train (or, from ``out/supernet``, reload) the supernet whose slices the evaluator then scores; nothing
    when ``steps`` is 0. Random slices are capped at 1.2× a MACs budget (capacity goes where the search
    looks); a latency budget leaves them uncapped. Returns the supernet or None."""
    if not steps:
        return None
    from ganprune.search.budget import is_latency, resolve_macs
    from ganprune.data.datasets import build_dataset
    from ganprune.search.supernet import train_supernet
    cap = None
    if not is_latency(g_budget):
        full = evaluator.g_space.macs(evaluator.g_space.full_widths())
        cap = min(1.0, round(1.2 * resolve_macs(g_budget, full) / full, 4))
    data = build_dataset(dataroot, mode=mode, phase=phase, direction=direction, load_size=size, crop_size=size)
    supernet = train_supernet(G, evaluator.g_space, data, os.path.join(out, "supernet") if out else None,
                              steps=steps, ranking=evaluator.g_ranking, max_macs=cap, seed=seed,
                              device=evaluator.device, progress=progress)
    evaluator.use_supernet(supernet)
    return supernet


def run_search(G, D, g_spec, d_spec, dataroot, out=None, *, mode="aligned", direction="AtoB", size=None,
               phase="train", calib_images=16, calib_batch=8, g_budget=0.25, d_budget=0.5, g_agent="greedy",
               d_agent="greedy", agent_file=None, g_agent_options=None, d_agent_options=None, rounds=None, seed=0,
               on_agent_error="stop", fill=True, latency_table=None, latency_backend="torch+fold",
               latency_threads=2, progress=True, agent_timeout=DEFAULT_TIMEOUT, supernet_steps=300,
               finalists=0, finalist_steps=60, **evaluator_options):
    """Collaborative search on the ``phase`` split of ``dataroot``; with ``out``, resumable and written there.

    Budgets as ``ganprune.search.budget.parse_budget`` reads them; a "…ms" budget times the network once into a
    ``LatencyTable`` (``latency_backend``, ``latency_threads``), kept as ``out/latency_<G|D>.yaml`` and
    reused by reruns; ``latency_table`` names a saved table to use for G instead; ``agent_timeout``: seconds
    one agent call may take (0: no limit); ``supernet_steps`` > 0 first trains a weight-sharing supernet
    (``attach_supernet``, kept in ``out/supernet``) and scores G candidates as its slices; ``finalists`` > 0:
    the best few are distilled ``finalist_steps`` steps on the ``phase`` split and scored again
    (``ganprune.search.finalists``)."""
    from ganprune.search.agent import make_agent
    from ganprune.search.budget import latency_table as build_table
    from ganprune.search.budget import parse_budget
    from ganprune.search.loop import search
    batches = calibration(dataroot, phase=phase, calib_images=calib_images, calib_batch=calib_batch, mode=mode,
                          direction=direction, size=size, seed=seed)
    evaluator = build_evaluator(G, D, batches, g_spec=g_spec, d_spec=d_spec, seed=seed, **evaluator_options)

    def table(net, space, example, name, given=None):
        path = given or (os.path.join(out, f"latency_{name}.yaml") if out else None)
        return lambda: build_table(net, space, example, path, latency_backend, latency_threads, progress)

    g_max = parse_budget(g_budget, evaluator.g_space,
                         table(G, evaluator.g_space, evaluator.g_example.cpu(), "G", latency_table))
    check_reachable(g_max, "G", "g_budget")
    g = make_agent(g_agent, evaluator.g_space, g_max, seed, "G", agent_file, **(g_agent_options or {}))
    d_max = d = None
    if D is not None:
        d_max = parse_budget(d_budget, evaluator.d_space, table(D, evaluator.d_space, evaluator.d_example.cpu(), "D"))
        check_reachable(d_max, "D", "d_budget")
        d = make_agent(d_agent, evaluator.d_space, d_max, seed + 1, "D", agent_file, **(d_agent_options or {}))
    elif progress:
        print("G-only search: no discriminator checkpoint, so only G is scored and pruned (the balance and D "
              "terms are 0, no D-agent); fine-tuning trains a fresh D", flush=True)
    # the budgets are checked above, before the supernet (minutes) is trained
    attach_supernet(evaluator, G, dataroot, out, steps=supernet_steps, g_budget=g_budget, mode=mode,
                    direction=direction, size=size, phase=phase, seed=seed, progress=progress)
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
