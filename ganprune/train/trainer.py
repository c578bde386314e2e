"""Fine-tune a pruned G/D pair with a recipe: devices, precision, DDP, LR schedule, checkpoints, recovery.

The recipe (``ganprune.train.recipe``) says what the losses are; this module runs them the same way
for every recipe, so a comparison between recipes differs only in the losses:

* device ``auto`` (CUDA if present), bf16/fp16 autocast (+ GradScaler for fp16) and channels_last on
  CUDA, fp32 on the CPU (``ganprune.core.device``);
* Adam(lr, β1, 0.999) for G and D (+ recipe optimizers), constant LR then linear decay to 0 from
  ``decay_from·steps`` (pix2pix);
* data order and augmentation are functions of (seed, step) (``ganprune.train.common.StepBatches``), and the
  state file carries weights, every optimizer, the scaler, the recipe's state and the RNG, so a resumed
  run gives the same weights as an uninterrupted one (exactly, on the CPU);
* ``torchrun --nproc_per_node N`` runs the same call data-parallel (NCCL on GPUs, gloo on the CPU):
  each step's global batch of N·batch_size is split between ranks, gradients are averaged before every
  optimizer step and buffers (BatchNorm statistics) follow rank 0, as DDP does; rank 0 writes. The
  per-step split replaces a ``DistributedSampler`` because it stays resumable mid-epoch;
* a NaN/inf loss restores the last good state (kept in memory at every save) and retries; after
  ``max_retries`` failures in a row it stops with a ``UserError``;
* the result is the last step's weights; the periodic val L1 is reported, never used to pick weights.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ganprune.core.device import autocast, make_grad_scaler, resolve_precision, to_channels_last
from ganprune.core.errors import UserError
from ganprune.core.options import FINETUNE_RUN, defaults
from ganprune.core.timing import Forecast
from ganprune.train.distributed import Dist, RankSlice
from ganprune.train.outputs import RunFiles
from ganprune.train.recipe import Recipe, get_recipe
from ganprune.models.registry import conditional_d
from ganprune.pruning.physical import pruned_info
from ganprune.train.common import (StepBatches, check_schedule, check_shapes, cpu_state, l1_scores, lr_factor, step_loader)


class _NonFinite(Exception):
    pass


# --------------------------------------------------------------------------- helpers

def val_l1(G: nn.Module, teacher_G: nn.Module | None, dataset, device, precision="fp32", paired=True,
           batch_size=16, num_workers: int = 0) -> dict:
    """The periodic validation check: mean |G(A) − B| (``val_L1``, paired data) and, with a teacher,
    |G(A) − teacher(A)| (``val_L1_student_to_teacher``) over every pixel of ``dataset``, G in eval mode;
    reported only, never used to choose weights (the final evaluation is ``ganprune.evaluation.evaluate``)."""
    return l1_scores(G, dataset, device, precision, batch_size, reference=teacher_G, paired=paired,
                     num_workers=num_workers)


class _Log:
    """``log.csv`` rows: the mean of every logged value over ``every`` steps (1: one row per step), a row
    at every evaluation too; the open window travels in the state so a resumed run writes the same rows."""

    def __init__(self, every: int, device):
        self.every, self.device = every, device
        self.rows: list[dict] = []
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0

    def add(self, logs: dict) -> None:
        self.n += 1
        for k, v in logs.items():
            v = v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v), device=self.device)
            self.sums[k] = self.sums[k] + v if k in self.sums else v  # stays on the device: no sync per step

    def row(self, step: int, lr: float) -> dict:
        row = {"step": step, "lr": lr, **{k: float(v / self.n) for k, v in self.sums.items()}}
        self.sums, self.n = {}, 0
        self.rows.append(row)
        return row

    def state(self) -> dict:
        return {"log": [dict(r) for r in self.rows],
                "log_window": {"n": self.n, "sums": {k: v.detach().to("cpu").clone() for k, v in self.sums.items()}}}

    def load(self, state: dict) -> None:
        window = state.get("log_window") or {"n": 0, "sums": {}}
        self.rows = [dict(r) for r in state["log"]]
        self.n, self.sums = int(window["n"]), {k: v.to(self.device) for k, v in window["sums"].items()}


class _Phase:
    def __init__(self, name, optimizer, loss_fn):
        self.name, self.opt, self.loss_fn = name, optimizer, loss_fn
        self.params = [p for g in optimizer.param_groups for p in g["params"]]


def _adam(modules, lr, beta1, fused):
    params = [p for m in modules for p in m.parameters()]
    return torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999), fused=fused)


def build_phases(rec: Recipe, lr: float, beta1: float = 0.5, fused=None):
    """Optimizers (``{"G", "D", "extra.<name>"}``; each group remembers its ``base_lr``), the phases
    of one step in order (D unless the recipe trains no student D, the recipe's extras, G) and every
    trainable parameter. The D optimizer exists either way, so checkpoints have one layout."""
    opt_G = _adam([rec.student_G, *rec.generator_extras()], lr, beta1, fused)
    opt_D = _adam([rec.student_D, *rec.discriminator_extras()], lr, beta1, fused) if rec.uses_D else None
    extra_opts = rec.extra_optimizers(lr, beta1)
    all_opts = {"G": opt_G, **({"D": opt_D} if opt_D is not None else {}),
                **{f"extra.{k}": o for k, o in extra_opts.items()}}
    for opt in all_opts.values():
        for group in opt.param_groups:
            group.setdefault("base_lr", group["lr"])
    phases = ([_Phase("D", opt_D, rec.discriminator_loss)] if opt_D is not None and rec.trains_student_D else [])
    phases += [_Phase(k, o, (lambda out_, k=k: rec.extra_loss(k, out_))) for k, o in extra_opts.items()]
    phases.append(_Phase("G", opt_G, rec.generator_loss))
    trainables = list(dict.fromkeys(p for ph in phases for p in ph.params))
    for p in trainables:  # the forward of each step runs with all of them requiring grad
        p.requires_grad_(True)
    return all_opts, phases, trainables


def _loss_parts(loss_fn, shared: dict, device, precision):
    """A phase's ``(loss, logs)``, or each part of a loss given in parts (``Recipe``), computed under autocast."""
    with autocast(device, precision):
        result = loss_fn(shared)
    if isinstance(result, tuple):
        yield result
        return
    while True:
        with autocast(device, precision):
            part = next(result, None)
        if part is None:
            return
        yield part


def train_step(rec: Recipe, phases, trainables, scaler, batch: dict, device, precision="fp32", ddp=None):
    """One step: the recipe's forward, then each phase with only its own parameters requiring grad; a loss
    given in parts is back-propagated part by part (summed gradients). Returns ``({phase: loss}, logs)``; the
    caller checks the losses (a NaN step must be undone)."""
    with autocast(device, precision):
        shared = rec.forward(batch)
    losses, logs = {}, {}
    for ph in phases:
        for p in trainables:
            p.requires_grad_(False)
        for p in ph.params:
            p.requires_grad_(True)
        ph.opt.zero_grad(set_to_none=True)
        total, phase_logs = 0.0, {}
        for loss, part_logs in _loss_parts(ph.loss_fn, shared, device, precision):
            scaler.scale(loss).backward()
            total = total + loss.detach().float()
            phase_logs.update(part_logs)
        if ddp is not None:
            ddp.average_grads(ph.params)
        scaler.step(ph.opt)
        losses[ph.name] = torch.as_tensor(total, device=device)
        logs.update({f"loss_{ph.name}": total, **phase_logs})
    for p in trainables:
        p.requires_grad_(True)
    scaler.update()
    logs.update(rec.after_step())
    return losses, logs


# --------------------------------------------------------------------------- the trainer

_F = defaults(FINETUNE_RUN)   # ``ganprune finetune``'s, which hands its options to this function by name


def finetune(student_G: nn.Module, student_D: nn.Module, teacher_G: nn.Module | None, teacher_D: nn.Module | None,
             dataset, recipe: str = _F["recipe"], steps: int = _F["steps"], out=None,
             batch_size: int = _F["batch_size"], lr: float = _F["lr"], beta1: float = _F["beta1"],
             decay_from: float = _F["decay_from"], seed: int = _F["seed"], device=_F["device"],
             precision: str = _F["precision"],
             save_every: int = _F["save_every"], eval_every: int = _F["eval_every"], eval_dataset=None,
             resume: bool = _F["resume"], recipe_options: dict | None = _F["recipe_options"], progress: bool = True,
             g_spec: dict | None = None, d_spec: dict | None = None, max_retries: int = 3,
             num_workers: int = _F["num_workers"], log_every: int = 1, files: RunFiles | None = None,
             settings: dict | None = None) -> dict:
    """Train ``student_G``/``student_D`` (in place) for ``steps`` steps with ``recipe``; returns a summary.
    Defaults: ``ganprune finetune``'s (``ganprune.core.options.FINETUNE_RUN``).

    ``recipe``: a registered name, or a ``Recipe`` subclass (the search's distillations, no CLI choices); a
    recipe that trains G alone (``uses_D`` False) takes ``student_D=None``.
    ``dataset`` yields ``{"A", "B"}`` items (aligned: paired; unaligned, recognised by ``A_path``:
    unpaired; ``"A"`` alone will do for such G-only recipes). Teachers are frozen (eval, no grad) and
    optional for recipes that learn without one (``pix2pix``); recipes that co-train one train their own copy.
    With ``out``: ``G.pt``/``D.pt`` (``save_pruned`` format: spec + widths travel along; the spec comes
    from ``load_pruned``'s metadata or ``g_spec``/``d_spec``), ``state.pt`` (resume) and
    ``log.csv`` (lr, each phase's loss and the recipe's logs, averaged over ``log_every`` steps; val L1 at
    evaluations: step 0, every ``eval_every`` steps (0: start and end only) and the end, when
    ``eval_dataset`` is given). ``files`` replaces that folder layout (teacher training writes the reference
    one); ``settings`` are further values a resumed run must share. With ``resume`` a rerun continues from
    the saved state; a larger ``steps`` continues the schedule towards the new end.
    """
    check_schedule(steps, batch_size, lr, decay_from, beta1, save_every=(save_every, 1), eval_every=(eval_every, 0),
                   max_retries=(max_retries, 0), log_every=(log_every, 1))
    cls = recipe if isinstance(recipe, type) and issubclass(recipe, Recipe) else get_recipe(recipe)
    if (student_D is None) == cls.uses_D:
        raise UserError(f"recipe {cls.name!r}: " + ("trains G alone; pass student_D=None" if student_D is not None
                                                    else "trains a discriminator too; pass student_D"))
    options = cls.check_options(dict(recipe_options or {}))
    if files is None and out is not None:
        files = RunFiles(out, g_spec, d_spec)
    ddp = Dist(device)
    if d_spec is None and student_D is not None and pruned_info(student_D) is not None:
        d_spec = pruned_info(student_D).spec   # a pruned D's saved spec carries the conditional-D fact
    run = _Run(cls, options, files, ddp, dict(batch_size=batch_size, lr=lr, beta1=beta1, decay_from=decay_from,
                                              seed=seed), settings or {}, d_spec)
    try:
        return run.train(student_G, student_D, teacher_G, teacher_D, dataset, steps, device, precision, save_every,
                         eval_every, log_every, eval_dataset, resume, progress, max_retries, num_workers)
    finally:
        for fn in reversed(run.cleanup):
            fn()


class _Run:
    """One call of ``finetune``: its settings, its output folder and what must be undone at the end."""

    def __init__(self, cls, options, files, ddp: Dist, schedule: dict, settings: dict, d_spec: dict | None):
        self.cls, self.options, self.files, self.ddp, self.d_spec = cls, options, files, ddp, d_spec
        self.schedule, self.settings = schedule, settings
        self.cleanup = [ddp.close]

    def config(self, paired: bool) -> dict:
        return {"recipe": self.cls.name, "recipe_options": {k: list(v) if isinstance(v, tuple) else v
                                                            for k, v in self.options.items()},
                **self.schedule, "world_size": self.ddp.world, "paired": paired, **self.settings}

    def train(self, G, D, T_G, T_D, dataset, steps, device, precision, save_every, eval_every, log_every,
              eval_dataset, resume, progress, max_retries, num_workers) -> dict:
        ddp, files, cls = self.ddp, self.files, self.cls
        batch_size, lr, seed = self.schedule["batch_size"], self.schedule["lr"], self.schedule["seed"]
        dev = ddp.device(device)
        prec = resolve_precision(dev, precision)
        writer = files is not None and ddp.rank == 0
        global_batch = batch_size * ddp.world
        if len(dataset) < global_batch:
            raise UserError(f"dataset: {len(dataset)} item(s), fewer than batch_size {batch_size} × {ddp.world} "
                            "rank(s)")
        first = dataset[0]
        paired = "A_path" not in first
        for T in (T_G, T_D):
            if T is not None:   # T_D is None for a G pruned without its discriminator
                T.to(dev).eval().requires_grad_(False)
        G.to(dev).train()
        check_shapes(G, first, type(G).__name__)
        conditional = False
        if D is not None:
            D.to(dev).train()
            conditional = conditional_d(self.d_spec, D, first["A"].shape[0], first["B"].shape[0])
        if writer:
            files.prepare(G, D, first, conditional)

        torch.manual_seed(seed)  # recipe-owned modules (connectors, adapters) start the same on every rank
        rec: Recipe = cls(G, D, T_G, T_D, paired, self.options, conditional_D=conditional)
        self.cleanup.append(rec.close)  # hooks on the caller's nets go when the call ends, however it ends
        extras = {k: m.to(dev) for k, m in rec.extra_modules().items()}
        all_opts, phases, trainables = build_phases(rec, lr, self.schedule["beta1"], fused=dev.type == "cuda" or None)
        nets = {"G": G, **({"D": D} if D is not None else {}), **{f"extra.{k}": m for k, m in extras.items()}}
        log = _Log(log_every, dev)
        checkpoint = _Checkpoint(self.config(paired), nets, all_opts, make_grad_scaler(dev, prec), rec, log, dev)

        start, train_seconds, resumed_from = 0, 0.0, None
        state = files.read_state() if resume and files is not None else None
        if state is not None:
            start, train_seconds = checkpoint.restore(checkpoint.check(state, files.path("state")))
            resumed_from = start
        for m in [*nets.values(), T_G, T_D]:
            if m is not None:
                to_channels_last(m)
        ddp.sync_from_rank0([t for m in nets.values() for t in [*m.parameters(), *m.buffers()]])
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True

        def do_eval(row):
            if eval_dataset is not None and ddp.rank == 0:
                row.update(val_l1(G, T_G, eval_dataset, dev, prec, paired, num_workers=num_workers))

        if start == 0 and not log.rows:
            do_eval(log.row(0, lr))
        loop = _Loop(self, checkpoint, rec, phases, trainables, nets, dev, prec, do_eval, writer)
        good, steps_run, run_seconds, retries = loop.run(dataset, start, steps, train_seconds, save_every,
                                                         eval_every, max_retries, num_workers, progress)
        if writer and start == steps and not files.complete():
            files.write(good, G, D)
        if files is not None:
            files.last_state = good

        last = log.rows[-1] if log.rows else {}
        return {"out": str(files.out) if files is not None else None, "recipe": cls.name, "options": self.options,
                "steps": steps, "steps_run": steps_run, "resumed_from": resumed_from, "retries": retries,
                "steps_per_s": steps_run / run_seconds if steps_run and run_seconds > 0 else None,
                "device": str(dev), "precision": prec, "world_size": ddp.world, "paired": paired,
                "val_L1": last.get("val_L1"), "val_L1_student_to_teacher": last.get("val_L1_student_to_teacher"),
                "last": last, "train_seconds": good["train_seconds"],
                "paths": files.paths() if files is not None else {}}


class _Loop:
    """The steps from ``start`` to ``steps``: schedule, train step, NaN recovery, log rows and saves."""

    def __init__(self, run: _Run, checkpoint, rec, phases, trainables, nets, dev, prec, do_eval, writer):
        self.run_, self.checkpoint, self.rec, self.phases, self.trainables = run, checkpoint, rec, phases, trainables
        self.nets, self.dev, self.prec, self.do_eval, self.writer = nets, dev, prec, do_eval, writer

    def run(self, dataset, start, steps, train_seconds, save_every, eval_every, max_retries, num_workers, progress):
        run, ckpt, dev, ddp = self.run_, self.checkpoint, self.dev, self.run_.ddp
        sched = run.schedule
        log, rec = ckpt.log, self.rec
        batch_size, seed = sched["batch_size"], sched["seed"]
        buffers = [b for m in self.nets.values() for b in m.buffers()]
        good = ckpt.snapshot(start, train_seconds)
        # time and steps since the last save count only once that save happens (a restore discards them)
        failures, retries, steps_run, pending, t_run, run_seconds = 0, 0, 0, 0, 0.0, 0.0
        step = start
        label = f"{run.files.label if run.files else 'finetune'} {run.cls.name}"
        bar = tqdm(total=steps, initial=start, desc=label, unit="step", disable=not progress or ddp.rank != 0,
                   dynamic_ncols=True)
        forecast = Forecast(label, steps - start, enabled=progress and ddp.rank == 0)
        while step < steps:
            sampler = RankSlice(StepBatches(len(dataset), batch_size * ddp.world, seed, step, steps), ddp.rank,
                                 batch_size)
            loader = step_loader(dataset, sampler, seed, step, num_workers, pin_memory=dev.type == "cuda")
            try:
                for batch in loader:
                    t0 = time.perf_counter()
                    factor = lr_factor(step, steps, sched["decay_from"])
                    for opt in ckpt.optimizers.values():
                        for group in opt.param_groups:
                            group["lr"] = group["base_lr"] * factor
                    rec.step, rec.steps = step, steps
                    batch = {k: to_channels_last(v.to(dev, non_blocking=True)) for k, v in batch.items()
                             if torch.is_tensor(v)}
                    losses, logs = train_step(rec, self.phases, self.trainables, ckpt.scaler, batch, dev, self.prec,
                                              ddp)
                    bad = not bool(torch.isfinite(torch.stack(list(losses.values()))).all())
                    if ddp.any(bad, dev):
                        raise _NonFinite(step, [k for k, v in losses.items() if not torch.isfinite(v)])
                    ddp.sync_from_rank0(buffers)  # BatchNorm statistics saw only this rank's share: rank 0's win
                    log.add(logs)
                    t_run += time.perf_counter() - t0
                    pending += 1
                    step += 1
                    forecast.tick()
                    eval_now = (eval_every and step % eval_every == 0) or step == steps
                    if step % log.every == 0 or eval_now:
                        row = log.row(step, sched["lr"] * factor)
                        if eval_now:
                            self.do_eval(row)
                        bar.set_postfix({k: f"{row[k]:.3f}" for k in ("loss_G", "loss_D") if k in row},
                                        refresh=False)
                    bar.update(1)
                    if step % save_every == 0 or step == steps:
                        train_seconds += t_run
                        run_seconds += t_run
                        steps_run += pending
                        t_run, pending = 0.0, 0
                        good = ckpt.snapshot(step, train_seconds)
                        failures = 0
                        if self.writer:
                            run.files.write(good, self.nets["G"], self.nets.get("D"))
            except _NonFinite as exc:
                at, which = exc.args
                failures += 1
                retries += 1
                if failures > max_retries:
                    bar.close()
                    raise UserError(f"recipe {run.cls.name!r}: loss became NaN/inf at step {at + 1} (phase "
                                    f"{', '.join(which) or 'other rank'}) {failures} times, each time after "
                                    f"restoring step {good['step']}; lower lr, use precision fp32, or check the "
                                    "data") from None
                step, train_seconds = ckpt.restore(good)
                t_run, pending = 0.0, 0
                bar.n = step
                bar.refresh()
        bar.close()
        return good, steps_run, run_seconds, retries


class _Checkpoint:
    """Everything a resumed run needs (nets, optimizers, scaler, recipe state, RNG, log), in and out."""

    def __init__(self, config: dict, nets: dict, optimizers: dict, scaler, rec: Recipe, log: _Log,
                 dev: torch.device):
        self.config, self.nets, self.optimizers, self.scaler, self.rec, self.log, self.dev = \
            config, nets, optimizers, scaler, rec, log, dev

    def snapshot(self, step: int, train_seconds: float) -> dict:
        return {"step": step, "config": self.config, "nets": {k: cpu_state(m) for k, m in self.nets.items()},
                # deep copies: optimizer state tensors are updated in place by later steps
                "optimizers": {k: copy.deepcopy(o.state_dict()) for k, o in self.optimizers.items()},
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                "recipe": copy.deepcopy(self.rec.state_dict()),
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if self.dev.type == "cuda" else []},
                "train_seconds": train_seconds, **self.log.state()}

    def restore(self, state: dict) -> tuple[int, float]:
        for k, m in self.nets.items():
            m.load_state_dict(state["nets"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.rec.load_state_dict(state.get("recipe") or {})
        torch.set_rng_state(state["rng"]["torch"])
        if self.dev.type == "cuda" and len(state["rng"]["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.log.load(state)
        return int(state["step"]), float(state["train_seconds"])

    def check(self, state: dict, path: Path) -> dict:
        """``state``, refused if it was trained with other settings."""
        for key in self.config:  # changing any of these would silently mix two different trainings
            if state["config"].get(key) != self.config[key]:
                raise UserError(f"{path}: was trained with {key}={state['config'].get(key)!r}, now "
                                f"{key}={self.config[key]!r}; use another out folder or resume=False (--no-resume)")
        return state
