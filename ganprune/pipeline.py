"""The stages a user runs, wired from plain options: load the teacher pair → search widths.

The CLI and the Python API both call these; each stage takes the previous stage's outputs.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ganprune.errors import UserError
from ganprune.guard import DEFAULT_TIMEOUT
from ganprune.outdir import one_run_at_a_time


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
    from ganprune.scoring import CandidateEvaluator
    from ganprune.objective import LocalDensityObjective
    from ganprune.space import SearchSpace
    from ganprune.models.sizes import check_image_size
    x = batches[0]["A"][:1]
    y = batches[0]["B"][:1]
    check_image_size(G, *x.shape[-2:], f"generator {(g_spec or {}).get('arch') or type(G).__name__!r}")
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
               on_agent_error="stop", fill=True, latency_table=None, latency_backend="torch+fold",
               latency_threads=2, progress=True, agent_timeout=DEFAULT_TIMEOUT, **evaluator_options):
    """Collaborative search on the ``phase`` split of ``dataroot``; with ``out``, resumable and written there.

    Budgets as ``ganprune.budget.parse_budget`` reads them; a "…ms" budget times the network once into a
    ``LatencyTable`` (``latency_backend``, ``latency_threads``), kept as ``out/latency_<G|D>.yaml`` and
    reused by reruns; ``latency_table`` names a saved table to use for G instead."""
    from ganprune.agent import make_agent
    from ganprune.budget import latency_table as build_table
    from ganprune.budget import parse_budget
    from ganprune.scoring import calibration_batches
    from ganprune.search import search
    torch.manual_seed(seed)
    batches = calibration_batches(dataroot, phase=phase, n_images=calib_images, batch_size=calib_batch,
                                  mode=mode, direction=direction, size=size)
    evaluator = build_evaluator(G, D, batches, g_spec=g_spec, d_spec=d_spec, seed=seed, **evaluator_options)
    def table(net, space, example, name, given=None):
        path = given or (os.path.join(out, f"latency_{name}.yaml") if out else None)
        return lambda: build_table(net, space, example, path, latency_backend, latency_threads, progress)

    g_max = parse_budget(g_budget, evaluator.g_space,
                         table(G, evaluator.g_space, evaluator.g_example.cpu(), "G", latency_table))
    d_max = parse_budget(d_budget, evaluator.d_space, table(D, evaluator.d_space, evaluator.d_example.cpu(), "D"))
    g = make_agent(g_agent, evaluator.g_space, g_max, seed, "G", agent_file, **(g_agent_options or {}))
    d = make_agent(d_agent, evaluator.d_space, d_max, seed + 1, "D", agent_file, **(d_agent_options or {}))
    if out:
        os.makedirs(out, exist_ok=True)
    result = search(evaluator, g, d, g_max, d_max, rounds=rounds, out_dir=out, on_agent_error=on_agent_error,
                    progress=progress, g_spec=g_spec, d_spec=d_spec, fill=fill, seed=seed, agent_timeout=agent_timeout)
    result.evaluator = evaluator
    return result


# --------------------------------------------------------------------------- the whole pipeline

STAGES = ("search", "prune", "finetune", "evaluate", "export", "report")
# What each stage writes: its finished marker records their hashes and is trusted only while they match.
STAGE_OUTPUTS = {"search": ("search/widths.yaml", "search/history.csv", "widths.yaml", "history.csv"),
                 "prune": ("pruned_G.pt", "pruned_D.pt"), "finetune": ("finetune/G.pt", "finetune/D.pt"),
                 "evaluate": ("evaluate/eval.csv", "evaluate/computed_on.yaml"), "export": ("G.onnx",),
                 "report": ("metrics.csv", "metrics.md")}
# Config keys whose change only invalidates the stages from this one on; every other key (the pair, the
# data, the search) invalidates everything.
_KEY_STAGE = {"recipe": "finetune", "finetune_steps": "finetune", "batch_size": "finetune",
              "fid": "evaluate", "eval_images": "evaluate", "latency": "evaluate"}
# Where the outputs go, how often fine-tuning checkpoints and how long an agent call may take are no part
# of what the outputs are: changing them redoes nothing.
_NOT_RESULTS = ("out", "save_every", "agent_timeout")


def resolve_config(config: dict) -> dict:
    """Every option of ``ganprune prune`` with its default, overlaid by ``config`` (unknown keys refused):
    the command's argument definitions are the single source of the keys and defaults."""
    from ganprune.cli import build_parser
    leaf = build_parser()[1]["prune"]
    resolved = {k: v for k, v in vars(leaf.parse_args([])).items()
                if not k.startswith("_") and k not in ("config", "stage", "debug")}
    for key, value in (config or {}).items():
        name = str(key).replace("-", "_")
        if name not in resolved:
            raise UserError(f"config: unknown option {key!r}; known options: {', '.join(sorted(resolved))}")
        resolved[name] = value
    return resolved


def search_options(c: dict) -> dict:
    """``run_search`` keyword arguments from resolved config values (shared by ``search`` and ``prune``)."""
    return dict(mode=c["mode"], direction=c["direction"], size=c["size"], phase=c["phase"],
                calib_images=c["calib_images"], calib_batch=c["calib_batch"], g_budget=c["g_budget"],
                d_budget=c["d_budget"], g_agent=c["g_agent"], d_agent=c["d_agent"], agent_file=c["agent_file"],
                rounds=c["rounds"], seed=c["seed"], on_agent_error=c["on_agent_error"], fill=c["fill"],
                latency_table=c["latency_table"], latency_backend=c["latency_backend"],
                latency_threads=c["latency_threads"], agent_timeout=c["agent_timeout"],
                **evaluator_options(c))


def evaluator_options(c: dict) -> dict:
    return dict(embedding=c["embedding"], m=c["m"], discrepancy=c["discrepancy"], l1_weight=c["l1_weight"],
                balance_weight=c["balance_weight"], g_space_file=c["g_space"], d_space_file=c["d_space"],
                importance=c["importance"])


def eval_phase(dataroot, mode: str = "aligned") -> str:
    """The held-out split evaluation uses: ``val``, else ``test`` (``valA``/``testA`` for unaligned sets)."""
    suffix = "A" if mode == "unaligned" else ""
    for phase in ("val", "test"):
        if os.path.isdir(os.path.join(os.fspath(dataroot), phase + suffix)):
            return phase
    raise UserError(f"{dataroot}: no val{suffix}/ or test{suffix}/ folder to evaluate on")


class _Run:
    """One pipeline run: the resolved config, the output folder, the log, and the lazily loaded teacher."""

    def __init__(self, config: dict, out, progress: bool):
        self.c, self.out, self.progress = config, os.fspath(out), progress
        self._pair = None

    def path(self, *parts) -> str:
        return os.path.join(self.out, *parts)

    def log(self, message: str) -> None:
        import time
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        with open(self.path("log.txt"), "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        if self.progress:
            print(message, flush=True)

    def need(self, *files: str) -> None:
        for f in files:
            if not os.path.exists(self.path(f)):
                stage = {"search/widths.yaml": "search", "pruned_G.pt": "prune", "pruned_D.pt": "prune",
                         "finetune/G.pt": "finetune", "evaluate/eval.csv": "evaluate", "G.onnx": "export"}.get(f)
                raise UserError(f"{self.path(f)}: not found; run the {stage} stage first (without --stage, "
                                "the pipeline runs every unfinished stage in order)")

    def pair(self):
        if self._pair is None:
            from types import SimpleNamespace

            from ganprune.cli import pair_from_args
            self._pair = pair_from_args(SimpleNamespace(**self.c))
        return self._pair

    def dataset(self, phase: str, train: bool):
        from ganprune.data import build_dataset
        c = self.c
        return build_dataset(c["dataroot"], c["mode"], phase, direction=c["direction"], load_size=c["size"],
                             crop_size=c["size"], **({} if train else {"flip": False}))

    # -- stages ---------------------------------------------------------------------------------
    def search(self) -> dict:
        G, D, g_spec, d_spec = self.pair()
        r = run_search(G, D, g_spec, d_spec, self.c["dataroot"], self.path("search"), progress=self.progress,
                       **search_options(self.c))
        if r.best is None:
            raise UserError(f"no candidate pair met both budgets in {len(r.history)} rounds; raise rounds or "
                            "loosen g_budget/d_budget")
        from ganprune.io import atomic_write_text
        atomic_write_text(self.path("search", "pareto.csv"), r.pareto().to_csv(index=False))
        for name in ("history.csv", "widths.yaml"):
            with open(self.path("search", name), encoding="utf-8") as fh:
                atomic_write_text(self.path(name), fh.read())
        b = r.best
        return {"rounds": len(r.history), "best_round": int(b["round"]), "score": float(b["score"]),
                "g_macs": int(b["g_macs"]), "d_macs": int(b["d_macs"])}

    def prune(self) -> dict:
        from ganprune.scoring import calibration_batches
        from ganprune.prune import save_pruned
        from ganprune.search import candidate_rng, load_winner
        self.need("search/widths.yaml")
        winner = load_winner(self.path("search", "widths.yaml"))
        G, D, g_spec, d_spec = self.pair()
        c = self.c
        # The search's own evaluator builds the pair exactly as it was scored (same ranking, BN re-estimated).
        batches = calibration_batches(c["dataroot"], phase=c["phase"], n_images=c["calib_images"],
                                      batch_size=c["calib_batch"], mode=c["mode"], direction=c["direction"],
                                      size=c["size"])
        evaluator = build_evaluator(G, D, batches, g_spec=g_spec, d_spec=d_spec, seed=c["seed"],
                                    **evaluator_options(c))
        g_w, d_w = evaluator.g_space.validate(winner["generator"]["widths"]), evaluator.d_space.validate(
            winner["discriminator"]["widths"])
        with candidate_rng(c["seed"], g_w, d_w, evaluator.device):   # exactly as the search scored it
            g, d = evaluator.build_pair(g_w, d_w)
        save_pruned(self.path("pruned_G.pt"), g.cpu(), g_spec, g.ganprune_widths)
        save_pruned(self.path("pruned_D.pt"), d.cpu(), d_spec, d.ganprune_widths)
        return {"g_macs": winner["generator"]["macs"], "d_macs": winner["discriminator"]["macs"]}

    def finetune(self) -> dict:
        from torch.utils.data import Subset

        from ganprune.finetune import finetune
        from ganprune.prune import load_pruned
        self.need("pruned_G.pt", "pruned_D.pt")
        TG, TD, _, _ = self.pair()
        c = self.c
        G, D = load_pruned(self.path("pruned_G.pt")), load_pruned(self.path("pruned_D.pt"))
        val = self.dataset(eval_phase(c["dataroot"], c["mode"]), False)
        if c["eval_images"]:   # the val L1 the trainer reports: on the images the evaluation uses
            val = Subset(val, range(min(int(c["eval_images"]), len(val))))
        r = finetune(G, D, TG, TD, self.dataset(c["phase"], True), recipe=c["recipe"], steps=c["finetune_steps"],
                     out=self.path("finetune"), batch_size=c["batch_size"], seed=c["seed"], eval_dataset=val,
                     save_every=c["save_every"],
                     progress=self.progress)
        for net in (TG, TD):   # the trainer moved the teachers to its device
            net.cpu()
        return {k: r[k] for k in ("recipe", "steps", "steps_run", "val_L1", "val_L1_teacher", "device")}

    def evaluate(self) -> dict:
        from ganprune.evaluation import evaluate, write_report
        from ganprune.io import atomic_write_yaml
        from ganprune.metrics.complexity import complexity
        from ganprune.prune import load_pruned
        self.need("pruned_G.pt", "finetune/G.pt")
        TG, TD, _, _ = self.pair()
        c = self.c
        models = {"pruned, before fine-tuning": load_pruned(self.path("pruned_G.pt")),
                  "pruned + fine-tuned": load_pruned(self.path("finetune", "G.pt"))}
        table, computed_on = evaluate(models, c["dataroot"], phase=eval_phase(c["dataroot"], c["mode"]),
                                      mode=c["mode"], direction=c["direction"], size=c["size"], n=c["eval_images"],
                                      fid=bool(c["fid"]), kid=bool(c["fid"]), teacher=TG, latency=bool(c["latency"]),
                                      progress=self.progress)
        table = table.set_index("model").loc[["teacher", *models]].reset_index()
        # D's cost beside G's: the search prunes both.
        d_shape = [1, *load_pruned(self.path("pruned_D.pt")).ganprune_input_shape[1:]]
        d_nets = [TD, load_pruned(self.path("pruned_D.pt")), load_pruned(self.path("finetune", "D.pt"))]
        table.insert(3, "D GMACs", [complexity(d, d_shape)["GMACs"] for d in d_nets])
        write_report(table, computed_on, self.path("evaluate"))
        atomic_write_yaml(self.path("evaluate", "computed_on.yaml"), _plain(computed_on))
        return {"rows": len(table)}

    def export(self) -> dict:
        import torch

        from ganprune.export import export_onnx
        from ganprune.prune import load_pruned
        self.need("finetune/G.pt")
        G = load_pruned(self.path("finetune", "G.pt"))
        r = export_onnx(G, self.path("G.onnx"), torch.zeros(G.ganprune_input_shape))
        return {k: r[k] for k in ("exporter", "opset", "bytes", "max_abs_diff", "batchnorm_folded")}

    def report(self) -> dict:
        import pandas as pd
        import yaml

        from ganprune.evaluation import report_markdown
        from ganprune.io import atomic_write_text
        self.need("evaluate/eval.csv", "G.onnx", "search/widths.yaml")
        table = pd.read_csv(self.path("evaluate", "eval.csv"))
        with open(self.path("evaluate", "computed_on.yaml"), encoding="utf-8") as fh:
            computed_on = yaml.safe_load(fh)
        from ganprune.search import load_winner
        winner = load_winner(self.path("search", "widths.yaml"))
        atomic_write_text(self.path("metrics.csv"), table.to_csv(index=False))
        text = report_markdown(table, computed_on)
        text += (f"\nSearch winner: round {winner['round']}, score {winner['score']:.4g}, G {winner['generator']['macs']:,}"
                 f" MACs, D {winner['discriminator']['macs']:,} MACs (widths.yaml); fine-tuned with recipe "
                 f"{self.c['recipe']} for {self.c['finetune_steps']} steps; ONNX: G.onnx\n")
        atomic_write_text(self.path("metrics.md"), text)
        png = self.pareto_png(winner)
        return {"pareto_png": png}

    def pareto_png(self, winner: dict) -> bool:
        """MACs vs score_g of every searched candidate, the Pareto front, and the winner."""
        import pandas as pd
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            self.log("report: matplotlib is not installed; skipped pareto.png (pip install matplotlib)")
            return False
        from ganprune.io import atomic_path
        from ganprune.search import pareto_front
        h = pd.read_csv(self.path("history.csv"))
        h = h[h["error"].isna() | (h["error"] == "")]
        front = pareto_front(h)
        ok = h["feasible"].astype(str) == "True"
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        ax.scatter(h.loc[ok, "g_macs"] / 1e6, h.loc[ok, "score_g"], s=14, label="within both budgets")
        ax.scatter(h.loc[~ok, "g_macs"] / 1e6, h.loc[~ok, "score_g"], s=14, marker="x", label="over a budget")
        ax.plot(front["g_macs"] / 1e6, front["score_g"], drawstyle="steps-post", lw=1, label="Pareto front")
        row = h[h["round"] == winner["round"]].iloc[0]
        ax.scatter([row["g_macs"] / 1e6], [row["score_g"]], s=160, marker="*", c="red", zorder=3,
                   label=f"winner (round {winner['round']})")
        ax.set_xlabel("G MMACs")
        ax.set_ylabel("score_g (lower is better)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        with atomic_path(self.path("pareto.png")) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        return True


def _plain(value):
    """``value`` as YAML-safe plain data (tuples → lists, numpy scalars → numbers)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def _changed_keys(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if k not in _NOT_RESULTS and old.get(k) != new.get(k))


def _changed_from(keys) -> str | None:
    """The first stage a config change invalidates (None: nothing that matters changed)."""
    return min((_KEY_STAGE.get(k, "search") for k in keys), key=STAGES.index) if keys else None


def _drop_stale_state(out: str, keys, log) -> None:
    """Resumable state that the changed ``keys`` make meaningless: a search history scored under other
    settings (more ``rounds`` alone extends it), and a fine-tuning run of other widths or settings (more
    ``finetune_steps`` alone continues it)."""
    import shutil
    history = os.path.join(out, "search", "history.csv")
    searched = [k for k in keys if _KEY_STAGE.get(k, "search") == "search" and k != "rounds"]
    if searched and os.path.exists(history):
        os.remove(history)
        log(f"search settings changed ({', '.join(searched)}): starting the search over")
    tuned = os.path.join(out, "finetune")
    if any(k not in ("rounds", "finetune_steps") and _KEY_STAGE.get(k, "search") in ("search", "finetune")
           for k in keys) and os.path.isdir(tuned):
        shutil.rmtree(tuned)
        log("fine-tuning inputs or settings changed: fine-tuning starts over")


@one_run_at_a_time("prune")
def run_pipeline(config: dict, out=None, stages=None, progress: bool = True) -> dict:
    """Search → prune → fine-tune → evaluate → export → report into ``out``, resumably.

    ``config`` holds ``ganprune prune`` options (the ``search`` options plus ``recipe``, ``finetune_steps``,
    ``batch_size``, ``fid``, ``eval_images``, ``latency``, ``out``). Each finished stage leaves
    ``out/.done/<stage>`` (written after its outputs), so a rerun skips it; a changed config reruns the
    stages it affects. ``stages`` (names) runs just those, finished or not; their inputs must exist.
    Returns ``{"table", "paths", "stages", "seconds"}``.
    """
    import time

    import pandas as pd
    import yaml

    from ganprune.io import atomic_write_yaml
    from ganprune.outdir import marker_problem, write_marker
    t0 = time.perf_counter()
    c = resolve_config(config)
    out = os.fspath(out or c.get("out") or "")
    if not out:
        raise UserError("missing out: the output folder (--out or 'out:' in the config)")
    if not c.get("dataroot"):
        raise UserError("missing dataroot: the dataset folder (--dataroot or 'dataroot:' in the config)")
    c["out"] = out
    for s in stages or ():
        if s not in STAGES:
            raise UserError(f"stage {s!r}: expected one of {', '.join(STAGES)}")
    os.makedirs(os.path.join(out, ".done"), exist_ok=True)
    run = _Run(c, out, progress)
    config_path = os.path.join(out, "config.yaml")
    first = None
    if os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as fh:
            old = yaml.safe_load(fh) or {}
        keys = _changed_keys(old, c)
        first = _changed_from(keys)
        if first is not None:
            run.log(f"config changed since the last run ({', '.join(keys)}): redoing the stages from {first} on")
            _drop_stale_state(out, keys, run.log)
            for s in STAGES[STAGES.index(first):]:
                if os.path.exists(os.path.join(out, ".done", s)):
                    os.remove(os.path.join(out, ".done", s))
    if not os.path.exists(config_path) or first is not None:
        atomic_write_yaml(config_path, c)
    status = {}
    for stage in STAGES:
        marker = os.path.join(out, ".done", stage)
        if stages and stage not in stages:
            continue
        problem = marker_problem(out, marker, STAGE_OUTPUTS[stage]) if os.path.exists(marker) else "not run"
        if not stages and problem is None:
            run.log(f"{stage}: skipped (finished earlier; delete {marker} to redo it)")
            status[stage] = "skipped"
            continue
        if not stages and problem != "not run":
            run.log(f"{stage}: finished earlier, but {problem}: running it again")
        run.log(f"{stage}: running")
        s0 = time.perf_counter()
        summary = getattr(run, stage)()
        for later in STAGES[STAGES.index(stage) + 1:]:   # their inputs just changed
            if os.path.exists(os.path.join(out, ".done", later)):
                os.remove(os.path.join(out, ".done", later))
        summary = {"seconds": round(time.perf_counter() - s0, 2), **_plain(summary)}
        write_marker(out, marker, summary, STAGE_OUTPUTS[stage])
        run.log(f"{stage}: done in {summary['seconds']:.1f} s " + ", ".join(
            f"{k} {v}" for k, v in summary.items() if k != "seconds"))
        status[stage] = "ran"
    metrics = os.path.join(out, "metrics.csv")
    table = pd.read_csv(metrics) if os.path.exists(metrics) else None
    paths = {name: os.path.join(out, f) for name, f in (
        ("metrics", "metrics.csv"), ("report", "metrics.md"), ("pareto", "pareto.png"), ("onnx", "G.onnx"),
        ("pruned_G", "pruned_G.pt"), ("pruned_D", "pruned_D.pt"), ("finetuned_G", "finetune/G.pt"),
        ("finetuned_D", "finetune/D.pt"), ("widths", "widths.yaml"), ("history", "history.csv"),
        ("config", "config.yaml"), ("log", "log.txt")) if os.path.exists(os.path.join(out, f))}
    return {"table": table, "paths": paths, "stages": status, "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------- demo

# What `ganprune demo` prunes its teacher with: G to 25% of its MACs, D to 50%, greedy G/D agents, the
# density objective and recipe. Sized so that the full demo (teacher included) stays under ~10 minutes on
# 2 CPU cores and --quick under ~2 (measured figures in the README).
DEMO_PRUNE = {
    "quick": {"rounds": 30, "calib_images": 8, "finetune_steps": 60, "fid": False, "eval_images": None},
    "default": {"rounds": 60, "calib_images": 16, "finetune_steps": 1000, "fid": True, "eval_images": None},
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
