"""Fine-tune a pruned G/D pair with a recipe: devices, precision, DDP, LR schedule, checkpoints, recovery.

The recipe (``ganprune.finetune.recipe``) says what the losses are; this module runs them the same way
for every recipe, so a comparison between recipes differs only in the losses:

* device ``auto`` (CUDA if present), bf16/fp16 autocast (+ GradScaler for fp16) and channels_last on
  CUDA, fp32 on the CPU (``ganprune.device``);
* Adam(lr, β1, 0.999) for G and D (+ recipe optimizers), constant LR then linear decay to 0 from
  ``decay_from·steps`` (pix2pix);
* data order and augmentation are functions of (seed, step) (``ganprune.training.StepBatches``), and the
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
import os
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Sampler
from tqdm.auto import tqdm

from ganprune.device import autocast, make_grad_scaler, pick_device, resolve_precision, to_channels_last
from ganprune.errors import UserError
from ganprune.finetune.recipe import Recipe, first_conv, get_recipe
from ganprune.io import atomic_torch_save
from ganprune.models.checkpoint import safe_torch_load
from ganprune.training import (StepBatches, check_schedule, check_shapes, cpu_state, l1_scores, lr_factor,
                               step_loader, write_log)

G_FILE, D_FILE, STATE_FILE, LOG_FILE = "G.pt", "D.pt", "state.pt", "log.csv"
# Changing these between a run and its resumption would silently mix two different trainings.
_RESUME_MUST_MATCH = ("recipe", "recipe_options", "batch_size", "lr", "beta1", "decay_from", "seed", "world_size",
                      "paired")


class _NonFinite(Exception):
    pass


class _RankSlice(Sampler):
    """This rank's share of each global batch: DDP without losing step-exact resumption."""

    def __init__(self, batches: StepBatches, rank: int, per_rank: int):
        self.batches, self.rank, self.per_rank = batches, rank, per_rank

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for batch in self.batches:
            yield batch[self.rank * self.per_rank:(self.rank + 1) * self.per_rank]


# --------------------------------------------------------------------------- distributed

class _Dist:
    """Rank/world from torchrun's environment; a process group started here is closed here."""

    def __init__(self, device_pref: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank, self.local_rank, self.owned = 0, 0, False
        if self.world <= 1:
            self.world = 1
            return
        import torch.distributed as dist
        self.dist = dist
        self.local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
        cuda = torch.cuda.is_available() and str(device_pref).lower() != "cpu"
        if cuda:
            torch.cuda.set_device(self.local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
            self.owned = True
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    @property
    def active(self) -> bool:
        return self.world > 1

    def device(self, pref: str) -> torch.device:
        dev = pick_device(pref)
        if self.active and dev.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return dev

    def average_grads(self, params: list[torch.Tensor]) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        if not self.active or not grads:
            return
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        self.dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def sync_from_rank0(self, tensors: list[torch.Tensor]) -> None:
        if self.active:
            for t in tensors:
                self.dist.broadcast(t.data, 0)

    def any(self, flag: bool, device) -> bool:
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return bool(t.item())

    def close(self):
        if self.owned:
            self.dist.destroy_process_group()


# --------------------------------------------------------------------------- helpers

def _save_info(net: nn.Module, spec, example: torch.Tensor, what: str) -> tuple[dict, dict, list]:
    """(spec, widths, input_shape) that ``save_pruned`` needs; a dense net gets its full widths."""
    spec = spec or getattr(net, "ganprune_spec", None)
    if spec is None:
        raise UserError(f"{what}: no build spec known; load it with load_pruned or pass {what[0].lower()}_spec="
                        "{'arch': ..., ...}")
    shape = getattr(net, "ganprune_input_shape", None) or [1, *example.shape[1:]]
    widths = getattr(net, "ganprune_widths", None)
    if widths is None:
        from ganprune.prune import prune
        widths = prune(net, {}, torch.zeros(shape), importance="first").ganprune_widths
    return dict(spec), dict(widths), list(shape)


def evaluate(G: nn.Module, teacher_G: nn.Module, dataset, device, precision="fp32", paired=True,
             batch_size=16) -> dict:
    """Mean |G(A) − B| (``val_L1``, paired data) and |G(A) − teacher(A)| (``val_L1_student_to_teacher``) over every
    pixel of ``dataset``, G in eval mode; reported only, never used to choose weights."""
    return l1_scores(G, dataset, device, precision, batch_size, reference=teacher_G, paired=paired)


class _Phase:
    def __init__(self, name, optimizer, loss_fn):
        self.name, self.opt, self.loss_fn = name, optimizer, loss_fn
        self.params = [p for g in optimizer.param_groups for p in g["params"]]


def _adam(modules, lr, beta1, fused):
    params = [p for m in modules for p in m.parameters()]
    return torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999), fused=fused)


def build_phases(rec: Recipe, lr: float, beta1: float = 0.5, fused=None):
    """Optimizers (``{"G", "D", "extra.<name>"}``; each group remembers its ``base_lr``), the phases
    of one step in order (D, the recipe's extras, G) and every trainable parameter."""
    opt_G = _adam([rec.student_G, *rec.generator_extras()], lr, beta1, fused)
    opt_D = _adam([rec.student_D, *rec.discriminator_extras()], lr, beta1, fused)
    extra_opts = rec.extra_optimizers(lr, beta1)
    all_opts = {"G": opt_G, "D": opt_D, **{f"extra.{k}": o for k, o in extra_opts.items()}}
    for opt in all_opts.values():
        for group in opt.param_groups:
            group.setdefault("base_lr", group["lr"])
    phases = ([_Phase("D", opt_D, rec.discriminator_loss)]
              + [_Phase(k, o, (lambda out_, k=k: rec.extra_loss(k, out_))) for k, o in extra_opts.items()]
              + [_Phase("G", opt_G, rec.generator_loss)])
    trainables = list(dict.fromkeys(p for ph in phases for p in ph.params))
    for p in trainables:  # the forward of each step runs with all of them requiring grad
        p.requires_grad_(True)
    return all_opts, phases, trainables


def train_step(rec: Recipe, phases, trainables, scaler, batch: dict, device, precision="fp32", ddp=None):
    """One step: the recipe's forward, then each phase with only its own parameters requiring grad.
    Returns ``({phase: loss}, logs)``; the caller checks the losses (a NaN step must be undone)."""
    with autocast(device, precision):
        shared = rec.forward(batch)
    losses, logs = {}, {}
    for ph in phases:
        for p in trainables:
            p.requires_grad_(False)
        for p in ph.params:
            p.requires_grad_(True)
        ph.opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss, phase_logs = ph.loss_fn(shared)
        scaler.scale(loss).backward()
        if ddp is not None:
            ddp.average_grads(ph.params)
        scaler.step(ph.opt)
        losses[ph.name] = loss.detach().float()
        logs.update({f"loss_{ph.name}": loss.detach(), **phase_logs})
    for p in trainables:
        p.requires_grad_(True)
    scaler.update()
    logs.update(rec.after_step())
    return losses, logs


# --------------------------------------------------------------------------- the trainer

def finetune(student_G: nn.Module, student_D: nn.Module, teacher_G: nn.Module, teacher_D: nn.Module, dataset,
             recipe: str = "density", steps: int = 1000, out=None, batch_size: int = 1, lr: float = 2e-4,
             beta1: float = 0.5, decay_from: float = 0.5, seed: int = 0, device="auto", precision: str = "auto",
             save_every: int = 500, eval_every: int = 0, eval_dataset=None, resume: bool = True,
             recipe_options: dict | None = None, progress: bool = True, g_spec: dict | None = None,
             d_spec: dict | None = None, max_retries: int = 3, num_workers: int = 0) -> dict:
    """Train ``student_G``/``student_D`` (in place) for ``steps`` steps with ``recipe``; returns a summary.

    ``dataset`` yields ``{"A", "B"}`` items (aligned: paired; unaligned, recognised by ``A_path``:
    unpaired). Teachers are frozen (eval, no grad); recipes that co-train one train their own copy.
    With ``out``: ``G.pt``/``D.pt`` (``save_pruned`` format: spec + widths travel along; the spec comes
    from ``load_pruned``'s ``ganprune_spec`` or ``g_spec``/``d_spec``), ``state.pt`` (resume) and
    ``log.csv`` (one row per step: lr, each phase's loss, the recipe's logs, val L1 at evaluations:
    step 0, every ``eval_every`` steps (0: start and end only) and the end, when ``eval_dataset`` is
    given). With ``resume`` a rerun continues from ``state.pt``; a larger ``steps`` continues the
    schedule towards the new end.
    """
    check_schedule(steps, batch_size, lr, decay_from, beta1, save_every=(save_every, 1), eval_every=(eval_every, 0),
                   max_retries=(max_retries, 0))
    cls = get_recipe(recipe)
    options = cls.check_options(dict(recipe_options or {}))
    ddp = _Dist(device)
    cleanup = [ddp.close]
    try:
        return _finetune(student_G, student_D, teacher_G, teacher_D, dataset, cls, options, steps,
                         Path(out) if out is not None else None, batch_size, lr, beta1, decay_from, seed, device,
                         precision, save_every, eval_every, eval_dataset, resume, progress, g_spec, d_spec,
                         max_retries, num_workers, ddp, cleanup)
    finally:
        for fn in reversed(cleanup):
            fn()


def _finetune(G, D, T_G, T_D, dataset, cls, options, steps, out, batch_size, lr, beta1, decay_from, seed, device,
              precision, save_every, eval_every, eval_dataset, resume, progress, g_spec, d_spec, max_retries,
              num_workers, ddp: _Dist, cleanup: list) -> dict:
    dev = ddp.device(device)
    prec = resolve_precision(dev, precision)
    writer = out is not None and ddp.rank == 0
    global_batch = batch_size * ddp.world
    if len(dataset) < global_batch:
        raise UserError(f"dataset: {len(dataset)} item(s), fewer than batch_size {batch_size} × {ddp.world} rank(s)")
    first = dataset[0]
    paired = "A_path" not in first

    for T in (T_G, T_D):
        if T is not None:   # T_D is None for a G pruned without its discriminator
            T.to(dev).eval().requires_grad_(False)
    G.to(dev).train()
    D.to(dev).train()
    check_shapes(G, first, type(G).__name__)
    if writer:
        g_info = _save_info(G, g_spec, first["A"][None], "student_G")
        d_example = torch.zeros(1, first_conv(D).in_channels, *first["B"].shape[1:])
        d_info = _save_info(D, d_spec, d_example, "student_D")

    torch.manual_seed(seed)  # recipe-owned modules (connectors, adapters) start the same on every rank
    rec: Recipe = cls(G, D, T_G, T_D, paired, options)
    cleanup.append(rec.close)  # hooks on the caller's nets go when the call ends, however it ends
    extras = {k: m.to(dev) for k, m in rec.extra_modules().items()}
    all_opts, phases, trainables = build_phases(rec, lr, beta1, fused=dev.type == "cuda" or None)
    nets = {"G": G, "D": D, **{f"extra.{k}": m for k, m in extras.items()}}
    scaler = make_grad_scaler(dev, prec)
    config = {"recipe": cls.name, "recipe_options": {k: list(v) if isinstance(v, tuple) else v
                                                     for k, v in options.items()},
              "batch_size": batch_size, "lr": lr, "beta1": beta1, "decay_from": decay_from, "seed": seed,
              "world_size": ddp.world, "paired": paired}

    checkpoint = _Checkpoint(config, nets, all_opts, scaler, rec, dev)
    snapshot, restore = checkpoint.snapshot, checkpoint.restore

    start, log_rows, train_seconds, resumed_from = 0, [], 0.0, None
    if resume and out is not None and (out / STATE_FILE).is_file():
        start, log_rows, train_seconds = restore(checkpoint.load(out / STATE_FILE))
        resumed_from = start
    for m in [*nets.values(), T_G, T_D]:
        if m is not None:
            to_channels_last(m)
    ddp.sync_from_rank0([t for m in nets.values() for t in [*m.parameters(), *m.buffers()]])
    buffers = [b for m in nets.values() for b in m.buffers()]
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True

    def do_eval(row):
        if eval_dataset is not None and ddp.rank == 0:
            row.update(evaluate(G, T_G, eval_dataset, dev, prec, paired))

    if start == 0 and not log_rows:
        row = {"step": 0, "lr": lr}
        do_eval(row)
        log_rows = [row]

    good = snapshot(start, log_rows, train_seconds)
    # time and steps since the last save count only once that save happens (a restore discards them)
    failures, retries, steps_run, pending, t_run, run_seconds = 0, 0, 0, 0, 0.0, 0.0
    step = start
    bar = tqdm(total=steps, initial=start, desc=f"finetune {cls.name}", unit="step",
               disable=not progress or ddp.rank != 0, dynamic_ncols=True)
    while step < steps:
        sampler = _RankSlice(StepBatches(len(dataset), global_batch, seed, step, steps), ddp.rank, batch_size)
        loader = step_loader(dataset, sampler, seed, step, num_workers, pin_memory=dev.type == "cuda")
        try:
            for batch in loader:
                t0 = time.perf_counter()
                factor = lr_factor(step, steps, decay_from)
                for opt in all_opts.values():
                    for group in opt.param_groups:
                        group["lr"] = group["base_lr"] * factor
                rec.step, rec.steps = step, steps
                batch = {k: to_channels_last(v.to(dev, non_blocking=True)) for k, v in batch.items()
                         if torch.is_tensor(v)}
                losses, logs = train_step(rec, phases, trainables, scaler, batch, dev, prec, ddp)
                bad = not bool(torch.isfinite(torch.stack(list(losses.values()))).all())
                if ddp.any(bad, dev):
                    raise _NonFinite(step, [k for k, v in losses.items() if not torch.isfinite(v)])
                ddp.sync_from_rank0(buffers)  # BatchNorm statistics saw only this rank's share: rank 0's win
                t_run += time.perf_counter() - t0
                pending += 1
                step += 1
                row = {"step": step, "lr": lr * factor,
                       **{k: float(v) for k, v in logs.items()}}
                if (eval_every and step % eval_every == 0) or step == steps:
                    do_eval(row)
                log_rows.append(row)
                bar.update(1)
                bar.set_postfix({k: f"{row[k]:.3f}" for k in ("loss_G", "loss_D")}, refresh=False)
                if step % save_every == 0 or step == steps:
                    train_seconds += t_run
                    run_seconds += t_run
                    steps_run += pending
                    t_run, pending = 0.0, 0
                    good = snapshot(step, log_rows, train_seconds)
                    failures = 0
                    if writer:
                        _save_all(out, good, G, D, g_info, d_info, log_rows)
        except _NonFinite as exc:
            at, which = exc.args
            failures += 1
            retries += 1
            if failures > max_retries:
                bar.close()
                raise UserError(f"recipe {cls.name!r}: loss became NaN/inf at step {at + 1} (phase "
                                f"{', '.join(which) or 'other rank'}) {failures} times, each time after restoring "
                                f"step {good['step']}; lower lr, use precision fp32, or check the data") from None
            step, log_rows, train_seconds = restore(good)
            t_run, pending = 0.0, 0
            bar.n = step
            bar.refresh()
    bar.close()
    if writer and start == steps and not (out / G_FILE).is_file():
        _save_all(out, good, G, D, g_info, d_info, log_rows)

    last = log_rows[-1] if log_rows else {}
    return {"out": str(out) if out is not None else None, "recipe": cls.name, "options": options,
            "steps": steps, "steps_run": steps_run, "resumed_from": resumed_from, "retries": retries,
            "steps_per_s": steps_run / run_seconds if steps_run and run_seconds > 0 else None,
            "device": str(dev), "precision": prec, "world_size": ddp.world, "paired": paired,
            "val_L1": last.get("val_L1"), "val_L1_student_to_teacher": last.get("val_L1_student_to_teacher"), "last": last,
            "paths": _paths(out)}


def _paths(out: Path | None) -> dict:
    files = (("G", G_FILE), ("D", D_FILE), ("state", STATE_FILE), ("log", LOG_FILE))
    return {name: str(out / f) for name, f in files} if out is not None else {}


class _Checkpoint:
    """Everything a resumed run needs (nets, optimizers, scaler, recipe state, RNG, log), in and out."""

    def __init__(self, config: dict, nets: dict, optimizers: dict, scaler, rec: Recipe, dev: torch.device):
        self.config, self.nets, self.optimizers, self.scaler, self.rec, self.dev = \
            config, nets, optimizers, scaler, rec, dev

    def snapshot(self, step: int, log_rows: list[dict], train_seconds: float) -> dict:
        return {"step": step, "config": self.config, "nets": {k: cpu_state(m) for k, m in self.nets.items()},
                # deep copies: optimizer state tensors are updated in place by later steps
                "optimizers": {k: copy.deepcopy(o.state_dict()) for k, o in self.optimizers.items()},
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                "recipe": copy.deepcopy(self.rec.state_dict()),
                "rng": {"torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if self.dev.type == "cuda" else []},
                "train_seconds": train_seconds, "log": [dict(r) for r in log_rows]}

    def restore(self, state: dict) -> tuple[int, list[dict], float]:
        for k, m in self.nets.items():
            m.load_state_dict(state["nets"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.rec.load_state_dict(state["recipe"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.dev.type == "cuda" and len(state["rng"]["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        return int(state["step"]), [dict(r) for r in state["log"]], float(state["train_seconds"])

    def load(self, path: Path) -> dict:
        """A saved state, refused if it was trained with other settings."""
        state = safe_torch_load(path)
        for key in _RESUME_MUST_MATCH:
            if state["config"].get(key) != self.config[key]:
                raise UserError(f"{path}: was trained with {key}={state['config'].get(key)!r}, now "
                                f"{key}={self.config[key]!r}; use another out folder or resume=False (--no-resume)")
        return state


def _save_all(out: Path, state: dict, G, D, g_info, d_info, log_rows) -> None:
    """State first: it alone is enough to resume, so a kill between these writes loses nothing."""
    from ganprune.prune import save_pruned
    atomic_torch_save(state, out / STATE_FILE)
    save_pruned(out / G_FILE, G, g_info[0], g_info[1], g_info[2])
    save_pruned(out / D_FILE, D, d_info[0], d_info[1], d_info[2])
    write_log(out / LOG_FILE, log_rows)
