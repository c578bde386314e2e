"""The whole pipeline, resumable: search → prune → fine-tune → evaluate → export → report.

``run_pipeline`` takes ``ganprune prune``'s options as a plain dict (``ganprune.core.options.PIPELINE``); the
CLI and the Python API both call it. Each stage takes the previous stage's outputs from the folder.
"""
from __future__ import annotations

import os

from ganprune.core.errors import UserError
from ganprune.core.outdir import one_run_at_a_time
from ganprune.core.options import PIPELINE, STAGES, resolve, search_keywords
from ganprune.train.pair import pair_from_options
from ganprune.search.setup import attach_supernet, prepare_from_options, run_search

__all__ = ["run_pipeline", "resolve_config", "eval_phase", "finetune_pruned"]


# --------------------------------------------------------------------------- the whole pipeline

# What each stage writes: its finished marker records their hashes and is trusted only while they match.
STAGE_OUTPUTS = {"search": ("search/widths.yaml", "search/history.csv", "widths.yaml", "history.csv"),
                 "prune": ("pruned_G.pt", "pruned_D.pt"),
                 "finetune": ("finetune/G.pt", "finetune/D.pt", "finetune/choice.yaml"),
                 "evaluate": ("evaluate/eval.csv", "evaluate/computed_on.yaml"), "export": ("G.onnx",),
                 "report": ("metrics.csv", "metrics.md", "grid.png")}
# Config keys whose change only invalidates the stages from this one on; every other key (the pair, the
# data, the search) invalidates everything.
_KEY_STAGE = {"recipe": "finetune", "finetune_steps": "finetune", "batch_size": "finetune",
              "fid": "evaluate", "eval_images": "evaluate", "latency": "evaluate"}
# Where the outputs go, how often fine-tuning checkpoints and how long an agent call may take are no part
# of what the outputs are: changing them redoes nothing.
_NOT_RESULTS = ("out", "save_every", "agent_timeout")
PRUNED_G, TUNED_G = "pruned_G.pt", "finetune/G.pt"
SHIPS_LABEL = {PRUNED_G: "the pruned G before fine-tuning", TUNED_G: "the fine-tuned pruned G"}


def resolve_config(config: dict) -> dict:
    """Every option of ``ganprune prune`` (``ganprune.core.options.PIPELINE``) with its default, overlaid by
    ``config``: unknown keys and bad values refused in one line naming the option."""
    return resolve(PIPELINE, config, source="config")


def eval_phase(dataroot, mode: str = "aligned") -> str:
    """The held-out split evaluation uses: ``val``, else ``test`` (``valA``/``testA`` for unaligned sets)."""
    from ganprune.data.datasets import held_out_phase
    phase = held_out_phase(dataroot, mode)
    if phase is None:
        suffix = "A" if mode == "unaligned" else ""
        raise UserError(f"{dataroot}: no val{suffix}/ or test{suffix}/ folder to evaluate on")
    return phase


# The pipeline ships the fine-tuned G unless it is worse than the pruned G by PSNR to what the recipe trains for
# (``judged_by``), judged on this many training images that fine-tuning does not train on (never on val/test: the
# evaluation stays honest).
JUDGE_IMAGES = 16


def judged_by(recipe: str, paired: bool) -> str:
    """The PSNR that decides what ships: to the ground truth for a recipe that learns without the teacher
    (``needs_teacher`` False: pix2pix) on paired data, to the teacher's output otherwise. A pix2pix fine-tune
    takes G away from the teacher as it gets closer to the truth; judged by the teacher, such a G (KID 0.147
    -> 0.102 on the frontier's val split) was dropped for the slice it started from."""
    import ganprune.train  # noqa: F401  (registers the built-in recipes)
    from ganprune.train.recipe import RECIPES
    learns_from_truth = not getattr(RECIPES.lookup(recipe), "needs_teacher", True)
    return "psnr_vs_ground_truth" if learns_from_truth and paired else "psnr_vs_teacher"


def judge_slice(n: int) -> list[int]:
    """Indices of the training images that judge pruned vs fine-tuned G: ``JUDGE_IMAGES`` spread evenly over
    a split of ``n``, at most a fifth of it; none below 5 images (then every training image judges)."""
    k = min(JUDGE_IMAGES, n // 5)
    return [(2 * i + 1) * n // (2 * k) for i in range(k)]


def finetune_pruned(pruned_g, pruned_d, teacher_G, teacher_D, d_spec, dataroot, out, *, mode="aligned",
                    direction="AtoB", load_size=None, crop_size=None, train_phase="train", eval_images=None,
                    hold_out=(), progress=True, **trainer) -> dict:
    """Fine-tune the pruned files ``pruned_g``/``pruned_d`` (``pruned_d`` None: a trainable copy of the
    teacher's D, or with no teacher D either a fresh one built from ``d_spec``) on ``dataroot`` into ``out``; the val L1 checks run on the held-out
    split (its first ``eval_images``), if there is one. ``hold_out``: indices of training images not to train
    on. ``trainer``: ``ganprune.train.trainer.finetune``'s keywords (recipe, steps, batch_size, lr, ...).
    What ``ganprune finetune`` and the pipeline stage run."""
    import copy

    from torch.utils.data import Subset

    from ganprune.data.datasets import build_dataset
    from ganprune.data.datasets import held_out_phase
    from ganprune.train.trainer import finetune
    from ganprune.pruning.physical import load_pruned
    G = load_pruned(pruned_g)
    if pruned_d:
        D = load_pruned(pruned_d)
    elif teacher_D is not None:
        D = copy.deepcopy(teacher_D)
    else:
        from ganprune.train.pair import fresh_discriminator
        D = fresh_discriminator(d_spec, trainer.get("seed", 0))
    data = {"direction": direction, "load_size": load_size, "crop_size": crop_size}
    train = build_dataset(dataroot, mode, train_phase, **data)
    if hold_out:
        held = set(hold_out)
        train = Subset(train, [i for i in range(len(train)) if i not in held])
    phase = held_out_phase(dataroot, mode)
    val = build_dataset(dataroot, mode, phase, flip=False, **data) if phase else None
    if val is not None and eval_images:   # the val L1 the trainer reports: on the images the evaluation uses
        val = Subset(val, range(min(int(eval_images), len(val))))
    r = finetune(G, D, teacher_G, teacher_D, train, out=out, eval_dataset=val, d_spec=None if pruned_d else d_spec,
                 progress=progress, **trainer)
    for net in (teacher_G, teacher_D):   # the trainer moved the teachers to its device
        if net is not None:
            net.cpu()
    return r


class _Run:
    """One pipeline run: the resolved config, the output folder, the log, and the lazily loaded teacher."""

    def __init__(self, config: dict, out, progress: bool, shared: dict | None = None):
        """``shared``: a family member's (``_run_family``) teacher ``pair`` and the family's supernet
        (``supernet_dir``, ``supernet_cap``), kept outside ``out``."""
        self.c, self.out, self.progress = config, os.fspath(out), progress
        shared = dict(shared or {})
        self._pair = shared.pop("pair", None)
        self.supernet = shared   # run_search's supernet_dir/supernet_cap; none: out/search/supernet, as always

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
                         "finetune/G.pt": "finetune", "finetune/choice.yaml": "finetune", "evaluate/eval.csv": "evaluate",
                         "G.onnx": "export"}.get(f)
                raise UserError(f"{self.path(f)}: not found; run the {stage} stage first (without --stage, "
                                "the pipeline runs every unfinished stage in order)")

    def pair(self):
        if self._pair is None:
            self._pair = pair_from_options(self.c)
        return self._pair

    # -- stages ---------------------------------------------------------------------------------
    def search(self) -> dict:
        os.makedirs(self.path("search"), exist_ok=True)
        if self.c.get("widths"):
            return self.adopt(self.c["widths"])
        G, D, g_spec, d_spec = self.pair()
        r = run_search(G, D, g_spec, d_spec, self.c["dataroot"], self.path("search"), progress=self.progress,
                       **search_keywords(self.c), **self.supernet)
        if r.best is None:
            raise UserError(f"no candidate pair met both budgets in {len(r.history)} rounds; raise rounds or "
                            "loosen g_budget/d_budget")
        from ganprune.core.io import atomic_write_text
        atomic_write_text(self.path("search", "pareto.csv"), r.pareto().to_csv(index=False))
        for name in ("history.csv", "widths.yaml"):
            with open(self.path("search", name), encoding="utf-8") as fh:
                atomic_write_text(self.path(name), fh.read())
        b = r.best
        return {"rounds": len(r.history), "best_round": int(b["round"]), "score": float(b["score"]),
                "g_macs": int(b["g_macs"]), "d_macs": int(b["d_macs"])}

    def setup(self):
        """The search's own setup without agents (``prepare``, as the search built it): the evaluator builds a
        pair exactly as the search scored it (same channel ranking, BN re-estimated on the same calibration
        images), the budgets are the search's (a latency table from ``search/`` reused)."""
        return prepare_from_options(self.c, *self.pair(), self.path("search"), agents=False, progress=self.progress)

    def adopt(self, path) -> dict:
        """The search stage for given widths (``widths``: a widths.yaml from `ganprune search` or `nni run`):
        they are checked against this pair's spaces and against the budgets like any candidate (widths over
        a budget are refused, in one line naming the file and the budget), scored once, and become the
        winner."""
        import json

        from ganprune.core.io import atomic_write_text
        from ganprune.core.options import read_yaml
        from ganprune.search.loop import HISTORY_COLUMNS, candidate_rng, save_winner
        given = read_yaml(path, "widths file")
        try:
            g_w, d_w = given["generator"]["widths"], given["discriminator"]["widths"]
        except (TypeError, KeyError):
            raise UserError(f"{path}: expected a widths.yaml (generator: widths:, discriminator: widths:) as "
                            "`ganprune search` writes it") from None
        s = self.setup()
        evaluator = s.evaluator
        try:
            g_w = evaluator.g_space.validate(g_w)
            d_w = evaluator.d_space.validate(d_w) if evaluator.d_space is not None else {}
        except UserError as exc:
            raise UserError(f"{path}: {exc}") from None
        if evaluator.d_space is None and given["discriminator"]["widths"]:
            raise UserError(f"{path}: has discriminator widths, but no --discriminator was given to prune")
        for net, widths, budget, option in (("G", g_w, s.g_budget, "g_budget"), ("D", d_w, s.d_budget, "d_budget")):
            if budget is not None and not budget.fits(widths):
                raise UserError(f"{path}: the {net} widths cost {budget.cost(widths):.4g} {budget.unit}, over "
                                f"{option} {self.c[option]}: {budget.describe()}; give the {option} they were found "
                                "under, or other widths")
        with candidate_rng(self.c["seed"], g_w, d_w, evaluator.device):   # as a search would score them
            metrics = evaluator.score_pair(g_w, d_w)
        row = {"round": 0, "phase": "given", "g_widths": json.dumps(g_w), "d_widths": json.dumps(d_w), "error": "",
               "g_feasible": True, "d_feasible": True, "feasible": True, **metrics}
        _, _, g_spec, d_spec = self.pair()
        save_winner(self.path("search", "widths.yaml"), dict(row, g_widths=g_w, d_widths=d_w), g_spec, d_spec,
                    (s.g_budget, s.d_budget))
        history = pd_frame([row], HISTORY_COLUMNS).to_csv(index=False)
        for name in ("search/history.csv", "history.csv"):
            atomic_write_text(self.path(*name.split("/")), history)
        with open(self.path("search", "widths.yaml"), encoding="utf-8") as fh:
            atomic_write_text(self.path("widths.yaml"), fh.read())
        self.log(f"search: adopted the widths in {path} (G {row['g_macs']:,} MACs, score {row['score']:.4g})")
        return {"rounds": 0, "given": os.fspath(path), "score": float(row["score"]), "g_macs": int(row["g_macs"]),
                "d_macs": int(row["d_macs"])}

    def prune(self) -> dict:
        from ganprune.pruning.physical import pruned_info, save_pruned
        from ganprune.search.loop import candidate_rng, load_winner
        self.need("search/widths.yaml")
        winner = load_winner(self.path("search", "widths.yaml"))
        G, D, g_spec, d_spec = self.pair()
        c = self.c
        evaluator = self.setup().evaluator
        attach_supernet(evaluator, G, c["dataroot"], self.path("search"), steps=c["supernet_steps"],
                        g_budget=c["g_budget"], mode=c["mode"], direction=c["direction"], size=c["size"],
                        phase=c["phase"], seed=c["seed"], progress=self.progress,   # the winner starts from its slice
                        folder=self.supernet.get("supernet_dir"), cap=self.supernet.get("supernet_cap", "auto"),
                        lambda_gan=c["supernet_lambda_gan"])
        g_w = evaluator.g_space.validate(winner["generator"]["widths"])
        d_w = evaluator.d_space.validate(winner["discriminator"]["widths"]) if evaluator.d_space is not None else {}
        with candidate_rng(c["seed"], g_w, d_w, evaluator.device):   # exactly as the search scored it
            g, d = evaluator.build_pair(g_w, d_w)
        save_pruned(self.path("pruned_G.pt"), g.cpu(), g_spec, pruned_info(g).widths)
        if d is None:   # G-only: fine-tuning trains a fresh D (the PatchGAN for the data's channels) beside G
            d = self.fresh_d(evaluator.g_example)
            self.log("prune: G-only (no discriminator checkpoint): pruned_D.pt is a freshly initialised D "
                     f"({d_spec.get('arch')}, {_first_conv_in(d)} input channels), trained from scratch when "
                     "fine-tuning")
        save_pruned(self.path("pruned_D.pt"), d.cpu(), d_spec, pruned_info(d).widths)
        return {"g_macs": winner["generator"]["macs"], "d_macs": winner["discriminator"]["macs"],
                "g_only": D is None}

    def fresh_d(self, g_example):
        """A new D from ``d_spec`` as a full-width 'pruned' net (seeded), for a G pruned without its D."""
        import torch

        from ganprune.train.pair import fresh_discriminator
        from ganprune.pruning.physical import prune
        _, _, _, d_spec = self.pair()
        d = fresh_discriminator(d_spec, self.c["seed"])
        return prune(d, {}, torch.zeros(1, _first_conv_in(d), *g_example.shape[-2:]))

    def finetune(self) -> dict:
        self.need("pruned_G.pt", "pruned_D.pt")
        TG, TD, _, d_spec = self.pair()
        c = self.c
        eval_phase(c["dataroot"], c["mode"])     # the evaluation needs a held-out split: say so now
        judge = judge_slice(len(self.train_images()))
        r = finetune_pruned(self.path("pruned_G.pt"), self.path("pruned_D.pt"), TG, TD, d_spec, c["dataroot"],
                            self.path("finetune"), mode=c["mode"], direction=c["direction"], load_size=c["size"],
                            crop_size=c["size"], train_phase=c["phase"], eval_images=c["eval_images"], hold_out=judge,
                            recipe=c["recipe"], steps=c["finetune_steps"], batch_size=c["batch_size"], seed=c["seed"],
                            save_every=c["save_every"], eval_every=0,   # val L1 at the start and end only
                            progress=self.progress)
        choice = self.choose(judge)
        return {**{k: r[k] for k in ("recipe", "steps", "steps_run", "val_L1", "val_L1_student_to_teacher", "device")},
                "ships": choice["ships"]}

    def train_images(self):
        """The training split, unflipped, as the search and fine-tuning load it."""
        from ganprune.data.datasets import build_dataset
        c = self.c
        return build_dataset(c["dataroot"], c["mode"], c["phase"], flip=False, direction=c["direction"],
                             load_size=c["size"], crop_size=c["size"])

    def choose(self, judge) -> dict:
        """pruned_G.pt or finetune/G.pt, by PSNR on the training images ``judge`` (which fine-tuning did not
        train on; none: every training image) to what the recipe trains for (``judged_by``): the ground truth
        for a recipe that learns without the teacher (pix2pix, paired data), the teacher's output otherwise.
        The fine-tuned G ships unless it is worse there. finetune/choice.yaml says which ships, with both
        PSNRs, and the export stage exports that one."""
        from torch.utils.data import Subset

        from ganprune.core.io import atomic_write_yaml
        from ganprune.metrics.quality import image_quality
        from ganprune.pruning.physical import load_pruned
        from ganprune.report import JUDGE_MEASURES
        data = self.train_images()
        on = (f"{len(judge)} training images held out of fine-tuning" if judge else
              f"all {len(data)} training image(s) (too few to hold any out; fine-tuning trained on them)")
        data = Subset(data, judge) if judge else data
        TG = self.pair()[0]
        q = {f: image_quality(load_pruned(self.path(*f.split("/"))), data, teacher=TG, fid=False, kid=False,
                              progress=False) for f in (PRUNED_G, TUNED_G)}
        measured = {"psnr_vs_teacher": {f: float(q[f]["psnr_teacher"]) for f in q}}
        if q[PRUNED_G]["psnr"] is not None:   # paired data
            measured["psnr_vs_ground_truth"] = {f: float(q[f]["psnr"]) for f in q}
        by = judged_by(self.c["recipe"], "psnr_vs_ground_truth" in measured)
        ships = PRUNED_G if measured[by][TUNED_G] < measured[by][PRUNED_G] else TUNED_G
        choice = {"ships": ships, "judged_on": on, "judged_by": by, **measured}
        atomic_write_yaml(self.path("finetune", "choice.yaml"), choice)
        change = ", ".join(f"PSNR vs {JUDGE_MEASURES[k][0]} {v[PRUNED_G]:.2f} -> {v[TUNED_G]:.2f} dB"
                           for k, v in measured.items())
        self.log(f"finetune: ships {ships} ({SHIPS_LABEL[ships]}), judged by PSNR vs {JUDGE_MEASURES[by][0]}; on "
                 f"{on}, before -> after fine-tuning: {change}")
        return choice

    def shipped(self) -> str:
        """The file the finetune stage chose to ship (``choose``)."""
        from ganprune.core.options import read_yaml
        self.need("finetune/G.pt", "finetune/choice.yaml")
        choice = read_yaml(self.path("finetune", "choice.yaml"), "choice file")
        ships = choice.get("ships") if isinstance(choice, dict) else None
        if ships not in SHIPS_LABEL:
            raise UserError(f"{self.path('finetune', 'choice.yaml')}: ships must be {PRUNED_G} or {TUNED_G}; "
                            "rerun the finetune stage")
        return ships

    def evaluate(self) -> dict:
        from ganprune.evaluation import evaluate, write_report
        from ganprune.core.io import atomic_write_yaml
        from ganprune.metrics.complexity import complexity
        from ganprune.pruning.physical import load_pruned, pruned_info
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
        d_shape = [1, *pruned_info(load_pruned(self.path("pruned_D.pt"))).input_shape[1:]]
        d_nets = [TD, load_pruned(self.path("pruned_D.pt")), load_pruned(self.path("finetune", "D.pt"))]
        table.insert(3, "D GMACs", [complexity(d, d_shape)["GMACs"] if d is not None else None for d in d_nets])
        write_report(table, computed_on, self.path("evaluate"))
        atomic_write_yaml(self.path("evaluate", "computed_on.yaml"), _plain(computed_on))
        return {"rows": len(table)}

    def export(self) -> dict:
        import torch

        from ganprune.deploy.export import export_onnx
        from ganprune.pruning.physical import load_pruned
        ships = self.shipped()
        G = load_pruned(self.path(*ships.split("/")))
        # Parity on real validation images: on a constant input InstanceNorm is degenerate (false alarms).
        from ganprune.data.datasets import build_dataset
        c = self.c
        val = build_dataset(c["dataroot"], c["mode"], eval_phase(c["dataroot"], c["mode"]), flip=False,
                            direction=c["direction"], load_size=c["size"], crop_size=c["size"])
        images = torch.stack([val[i]["A"] for i in range(min(2, len(val)))])
        r = export_onnx(G, self.path("G.onnx"), images[:1], images=images, threads="auto",
                        metadata={"stage": f"{SHIPS_LABEL[ships]} ({ships})",
                                  "teacher": self.c.get("teacher") or self.c.get("generator") or ""})
        return {"ships": ships, **{k: r[k] for k in ("exporter", "opset", "bytes", "max_abs_diff", "parity_input",
                                                      "dynamic_hw", "threads", "batchnorm_folded")}}

    def report(self) -> dict:
        from ganprune.report import write_run_report
        self.need("evaluate/eval.csv", "G.onnx", "search/widths.yaml", "finetune/choice.yaml")
        return write_run_report(self.out, self.c, self.log)


def pd_frame(rows, columns):
    import pandas as pd
    return pd.DataFrame(rows, columns=columns)


def _first_conv_in(net) -> int:
    from ganprune.deploy.export import input_channels
    return input_channels(net)


def _plain(value):
    """``value`` as YAML-safe plain data (tuples → lists, numpy scalars → numbers)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


# How a latency is timed matters only to a budget in milliseconds: without one, a changed default (or option)
# there changes no result.
_LATENCY_ONLY = ("latency_backend", "latency_threads", "latency_table")


def _has_ms_budget(config: dict) -> bool:
    from ganprune.core.options import budget_list
    from ganprune.search.budget import is_latency
    return any(is_latency(b) for key in ("g_budget", "d_budget") if config.get(key) is not None
               for b in budget_list(config[key]))


def _changed_keys(old: dict, new: dict) -> list[str]:
    """Keys whose values differ; one the old config lacks (an option added since, whose default keeps the old
    behaviour) counts as its default, so an upgrade alone redoes nothing; the latency timing options count only
    when a budget is in milliseconds."""
    base = {o.name: o.default for o in PIPELINE}
    ignored = _NOT_RESULTS + (() if _has_ms_budget(old) or _has_ms_budget(new) else _LATENCY_ONLY)
    return sorted(k for k in set(old) | set(new) if k not in ignored and old.get(k, base.get(k)) != new.get(k))


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


def run_pipeline(config: dict, out=None, stages=None, progress: bool = True) -> dict:
    """Search → prune → fine-tune → evaluate → export → report into ``out``, resumably.

    ``config`` holds ``ganprune prune`` options (the ``search`` options plus ``recipe``, ``finetune_steps``,
    ``batch_size``, ``fid``, ``eval_images``, ``latency``, ``out``). Each finished stage leaves
    ``out/.done/<stage>`` (written after its outputs), so a rerun skips it; a changed config reruns the
    stages it affects. ``stages`` (names) runs just those, finished or not; their inputs must exist.
    Returns ``{"table", "paths", "stages", "seconds"}``.
    """
    c = resolve_config(config)     # every value checked before the output folder is touched
    out = os.fspath(out or c.get("out") or "")
    if not out:
        raise UserError("missing out: the output folder (--out or 'out:' in the config)")
    if not c.get("dataroot"):
        raise UserError("missing dataroot: the dataset folder (--dataroot or 'dataroot:' in the config)")
    c["out"] = out
    for s in stages or ():
        if s not in STAGES:
            raise UserError(f"stage {s!r}: expected one of {', '.join(STAGES)}")
    from ganprune.search.family import is_family
    if is_family(c["g_budget"], out):
        if c.get("widths"):
            raise UserError("widths: one widths file prunes to one G, not a family of budgets (several g_budget, "
                            "or an out folder holding family.csv)")
        return _run_family(c, out, stages, progress)
    return _run_stages(c, out, stages, progress)


@one_run_at_a_time("prune")
def _run_family(c: dict, out: str, stages, progress: bool) -> dict:
    """``run_pipeline`` for a family of G budgets (``ganprune.search.family``): the supernet once in
    ``out/search/supernet``, then the whole pipeline per budget in ``out/g<budget>/`` (each resumable as a
    single run, all on that supernet), and ``out/family.csv``/``family.md``: the teacher and, per budget,
    the evaluation row of the G that ships."""
    import time

    import pandas as pd

    from ganprune.core.options import budget_list, read_yaml
    from ganprune.search.family import budget_folder, earlier_rows, merge_rows, prepare_family, write_family
    t0 = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    earlier = earlier_rows(out)   # a broken family.csv is refused before any work, not after it
    log = _Run(c, out, progress).log
    pair = pair_from_options(c)
    info = prepare_family(c, pair, os.path.join(out, "search"), log=log, progress=progress)
    shared = {"pair": pair, "supernet_dir": info["supernet"], "supernet_cap": info["cap"]}
    rows, status, family, teacher = [], {}, {}, None
    for b in budget_list(c["g_budget"]):
        name = budget_folder(b)
        sub = os.path.join(out, name)
        log(f"family: g_budget {b} in {sub}")
        r = family[str(b)] = _run_stages({**c, "g_budget": b, "out": sub, "latency_table": info["latency_table"]},
                                         sub, stages, progress, shared)
        status.update({f"{name}/{stage}": state for stage, state in r["stages"].items()})
        if r["table"] is None:   # not evaluated yet (a --stage run): a row that says so
            rows.append({"g_budget": str(b), "ships": "not evaluated yet"})
            continue
        choice = read_yaml(os.path.join(sub, "finetune", "choice.yaml"), "choice file")
        table = r["table"].set_index("model")
        teacher = table.loc["teacher"]
        seconds = sum(float((read_yaml(os.path.join(sub, ".done", s), "stage marker") or {}).get("seconds", 0))
                      for s in STAGES if os.path.isfile(os.path.join(sub, ".done", s)))
        row = table.loc["pruned, before fine-tuning" if choice["ships"] == PRUNED_G else "pruned + fine-tuned"]
        rows.append({"g_budget": str(b), "ships": f"{name}/{choice['ships']}", **row.to_dict(),
                     "seconds": round(seconds, 1)})
    table = merge_rows(earlier, rows, size="GMACs")
    if teacher is not None:   # the dense row first, measured this run
        table = table[table["g_budget"] != "dense"]
        table = pd.concat([pd.DataFrame([{"g_budget": "dense", "ships": "teacher", **teacher.to_dict()}]), table],
                          ignore_index=True)
    note = (f"One supernet ({info['supernet']}, {info['steps']} steps) served every budget." if info["supernet"]
            else "No supernet (supernet_steps 0).") + (
        " Each budget's run: its folder (metrics.md, G.onnx, ...); the row is the G that ships (its "
        "finetune/choice.yaml); seconds: the stages' own times (the .done markers), without the supernet.")
    paths = write_family(out, table, note)
    return {"table": table, "paths": paths, "stages": status, "family": family,
            "seconds": time.perf_counter() - t0}


@one_run_at_a_time("prune")
def _run_stages(c: dict, out: str, stages, progress: bool, shared: dict | None = None) -> dict:
    """``run_pipeline``'s work on the resolved config ``c``, holding ``out``'s lock (paths checked first)."""
    import time

    import pandas as pd
    import yaml

    from ganprune.core.io import atomic_write_yaml
    from ganprune.core.outdir import marker_problem, write_marker
    t0 = time.perf_counter()
    os.makedirs(os.path.join(out, ".done"), exist_ok=True)
    run = _Run(c, out, progress, shared)
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
        ("metrics", "metrics.csv"), ("report", "metrics.md"), ("pictures", "grid.png"), ("pareto", "pareto.png"),
        ("onnx", "G.onnx"), ("choice", "finetune/choice.yaml"),
        ("pruned_G", "pruned_G.pt"), ("pruned_D", "pruned_D.pt"), ("finetuned_G", "finetune/G.pt"),
        ("finetuned_D", "finetune/D.pt"), ("widths", "widths.yaml"), ("history", "history.csv"),
        ("config", "config.yaml"), ("log", "log.txt")) if os.path.exists(os.path.join(out, f))}
    return {"table": table, "paths": paths, "stages": status, "seconds": time.perf_counter() - t0}
