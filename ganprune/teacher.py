"""Train a Pix2Pix teacher (G and D) on an aligned dataset, resumably, in the reference format.

Why here: pruning needs a trained dense pair, and users without one (or the demo) need a way to get
it. The recipe is the reference pix2pix one: a conditional PatchGAN D on cat(A, B), G loss
GAN + λ·L1, Adam(lr, β1, 0.999), constant LR then linear decay to zero.

Resuming is exact on the CPU: the data order and every sample's augmentation are functions of
(seed, step) — each item is drawn under its own seed, whatever process loads it — and the state file
holds the weights, optimizers, loss scaler and the training RNG, all as plain tensors/data (so it
loads with ``weights_only=True``). The LR is a pure function of the step and the target steps, so a
rerun with a larger ``steps`` simply continues the schedule towards the new end.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm.auto import tqdm

from ganprune.data.datasets import AlignedDataset, held_out_phase
from ganprune.device import autocast, make_grad_scaler, pick_device, resolve_precision, to_channels_last
from ganprune.errors import UserError
from ganprune.io import atomic_torch_save, atomic_write_yaml
from ganprune.losses import GANLoss
from ganprune.models import check_image_size, load_discriminator, load_generator
from ganprune.models.checkpoint import safe_torch_load
from ganprune.models.registry import DISCRIMINATORS, GENERATORS, check_arch_allowed, is_class_path
from ganprune.training import (SeededItems, StepBatches, check_schedule, check_shapes, cpu_state, l1_scores,
                               lr_factor, step_loader, write_log)

G_FILE, D_FILE, SPEC_FILE, STATE_FILE, LOG_FILE = ("latest_net_G.pth", "latest_net_D.pth", "teacher.yaml",
                                                   "train_state.pt", "log.csv")
LOG_COLUMNS = ["step", "loss_G_GAN", "loss_G_L1", "loss_D", "lr", "val_L1"]
# Changing these between a run and its resumption would silently mix two different trainings.
_RESUME_MUST_MATCH = ("G", "D", "batch_size", "lr", "beta1", "lambda_l1", "gan_mode", "decay_from", "seed",
                      "direction", "load_size", "crop_size", "val_items")


# --------------------------------------------------------------------------- data

def _aligned(dataroot, phase, **kw):
    return AlignedDataset(dataroot, phase=phase, **kw)


# --------------------------------------------------------------------------- evaluation

def val_l1(G: nn.Module, dataset, device=None, precision: str = "fp32", batch_size: int = 16,
           num_workers: int = 0) -> float:
    """Mean |G(A) − B| over every pixel of ``dataset`` (values in [-1, 1]), G in eval mode."""
    return l1_scores(G, dataset, device, precision, batch_size, num_workers=num_workers)["val_L1"]


# --------------------------------------------------------------------------- files

def _read_log(path: Path, upto: int) -> list[dict]:
    """Rows of an earlier run up to the resumed step (rows after it are redone)."""
    if not path.is_file():
        return []
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return []
    frame = frame[frame["step"] <= upto] if "step" in frame else frame.iloc[0:0]
    return [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in frame.to_dict("records")]


def _save(out: Path, G, D, state: dict, spec: dict, log_rows: list[dict]) -> None:
    """Everything for one step. The state file alone is enough to resume (it carries the weights too),
    so a kill between these writes never leaves an inconsistent resume point."""
    atomic_torch_save(state, out / STATE_FILE)
    atomic_torch_save(state["G"], out / G_FILE)
    atomic_torch_save(state["D"], out / D_FILE)
    atomic_write_yaml(out / SPEC_FILE, spec)
    write_log(out / LOG_FILE, log_rows, LOG_COLUMNS)


def load_teacher(out, device="cpu") -> tuple[nn.Module, nn.Module, dict]:
    """The trained pair from a ``train_teacher`` folder: ``(G, D, spec)``, strictly loaded, in eval mode;
    ``spec`` is ``teacher.yaml`` (``spec["G"]``/``spec["D"]`` are the build options)."""
    out = Path(out)
    spec_path = out / SPEC_FILE
    if not spec_path.is_file():
        raise UserError(f"{spec_path}: not found (expected a folder written by `ganprune train-teacher`)")
    try:
        spec = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"{spec_path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("G"), dict) or not isinstance(spec.get("D"), dict):
        raise UserError(f"{spec_path}: expected mappings 'G' and 'D' with the networks' build options")
    for net, table in (("G", GENERATORS), ("D", DISCRIMINATORS)):
        arch = spec[net].get("arch")
        check_arch_allowed(arch, f"{spec_path}: {net}")
        if not is_class_path(arch) and arch not in table:
            raise UserError(f"{spec_path}: {net} arch {arch!r} is not one of {', '.join(sorted(table))}")
    G = load_generator(out / G_FILE, **spec["G"]).to(device).eval()
    D = load_discriminator(out / D_FILE, **spec["D"]).to(device).eval()
    return G, D, spec


# --------------------------------------------------------------------------- training

def _check_args(dataroot, steps, batch_size, lr, beta1, decay_from, save_every, eval_every, log_every):
    if not os.path.isdir(os.path.join(dataroot, "train")):
        raise UserError(f"{dataroot}: expected an aligned dataset folder with a train/ subfolder of A|B images")
    check_schedule(steps, batch_size, lr, decay_from, beta1, save_every=(save_every, 1), eval_every=(eval_every, 0),
                   log_every=(log_every, 1))


def _resume_state(out: Path, config: dict, resume: bool):
    """The saved state to continue from (None: start afresh), refused if it is not a train-teacher state or
    was trained with other settings."""
    if resume and (out / STATE_FILE).is_file():
        state = safe_torch_load(out / STATE_FILE)
        missing = [k for k in ("step", "config", "G", "D", "opt_G", "opt_D", "rng", "train_seconds", "val_history")
                   if not isinstance(state, dict) or k not in state]
        if missing:
            raise UserError(f"{out / STATE_FILE}: not a train-teacher state (missing {', '.join(missing)}); "
                            "use another out folder or resume=False (--no-resume)")
        for key in _RESUME_MUST_MATCH:
            if state["config"].get(key) != config[key]:
                raise UserError(f"{out / STATE_FILE}: was trained with {key}={state['config'].get(key)!r}, now "
                                f"{key}={config[key]!r}; use another out folder or resume=False (--no-resume)")
        return state
    if resume and (out / G_FILE).exists():
        raise UserError(f"{out / G_FILE}: exists but no {STATE_FILE} beside it (not written by train-teacher?); "
                        "use another out folder or resume=False (--no-resume) to overwrite it")
    return None


def _pix2pix_step(G, D, opt_G, opt_D, scaler, gan_loss, real_a, real_b, lambda_l1, dev, prec) -> torch.Tensor:
    """One reference pix2pix step; returns the detached (G GAN, λ·L1, D) losses."""
    with autocast(dev, prec):
        fake_b = G(real_a)
    # D: real pairs → real, generated pairs → fake (G's output detached).
    D.requires_grad_(True)
    opt_D.zero_grad(set_to_none=True)
    with autocast(dev, prec):
        loss_d_fake = gan_loss(D(torch.cat([real_a, fake_b.detach()], 1)), False)
        loss_d_real = gan_loss(D(torch.cat([real_a, real_b], 1)), True)
        loss_d = 0.5 * (loss_d_fake + loss_d_real)
    scaler.scale(loss_d).backward()
    scaler.step(opt_D)
    # G: fool the (just updated, now frozen) D and stay close to B in L1.
    D.requires_grad_(False)
    opt_G.zero_grad(set_to_none=True)
    with autocast(dev, prec):
        loss_g_gan = gan_loss(D(torch.cat([real_a, fake_b], 1)), True, for_discriminator=False)
        loss_g_l1 = F.l1_loss(fake_b.float(), real_b.float()) * lambda_l1
        loss_g = loss_g_gan + loss_g_l1
    scaler.scale(loss_g).backward()
    scaler.step(opt_G)
    scaler.update()
    return torch.stack([loss_g_gan.detach(), loss_g_l1.detach(), loss_d.detach()]).float()


def train_teacher(dataroot, out, arch: str = "unet_128", ngf: int = 64, netD: str = "basic", ndf: int = 64,
                  n_layers_D: int = 3, norm: str = "batch", dropout: bool = True, direction: str = "AtoB",
                  load_size: int | None = None, crop_size: int | None = None, batch_size: int = 1,
                  steps: int = 20000, lr: float = 2e-4, beta1: float = 0.5, lambda_l1: float = 100.0,
                  gan_mode: str = "vanilla", decay_from: float = 0.5, seed: int = 0, device="auto",
                  precision: str = "auto", save_every: int = 1000, eval_every: int = 2000, log_every: int = 10,
                  val_items: int | None = None, resume: bool = True, num_workers: int = 0,
                  progress: bool = True) -> dict:
    """Train (or continue training) a Pix2Pix teacher into ``out``; returns a summary dict.

    Writes ``latest_net_G.pth``/``latest_net_D.pth`` (reference-format state dicts), ``teacher.yaml``
    (specs, data, steps done, val L1), ``train_state.pt`` (everything to resume) and ``log.csv`` (mean
    losses every ``log_every`` steps — ``loss_G_L1`` is λ·L1 as in the reference logs — and val L1 at
    evaluations: step 0, every ``eval_every`` steps (0: only start and end) and the end; ``val_items``
    caps the val images used, first ones in file order). With
    ``resume`` a rerun continues from the last save; a finished run returns at once.
    """
    dataroot, out = os.fspath(dataroot), Path(out)
    _check_args(dataroot, steps, batch_size, lr, beta1, decay_from, save_every, eval_every, log_every)
    dev = pick_device(device)
    prec = resolve_precision(dev, precision)
    gan_loss = GANLoss(gan_mode).to(dev)

    train_set = _aligned(dataroot, "train", direction=direction, load_size=load_size, crop_size=crop_size)
    if len(train_set) < batch_size:
        raise UserError(f"{dataroot}/train: {len(train_set)} image(s), fewer than batch_size {batch_size}")
    first = SeededItems(train_set)[(0, seed)]  # shapes only; leaves the global RNG alone
    val_phase = held_out_phase(dataroot)
    # Evaluation phases resize straight to crop_size (no random crop); no flip either.
    val_set = (_aligned(dataroot, val_phase, direction=direction, load_size=load_size, crop_size=crop_size,
                        flip=False, max_items=val_items) if val_phase else None)

    g_spec = {"arch": arch, "ngf": ngf, "norm": norm, "dropout": bool(dropout),
              "input_nc": int(first["A"].shape[0]), "output_nc": int(first["B"].shape[0])}
    d_spec = {"arch": netD, "ndf": ndf, "norm": norm, "n_layers": n_layers_D,
              "input_nc": g_spec["input_nc"] + g_spec["output_nc"]}
    config = {"G": g_spec, "D": d_spec, "batch_size": batch_size, "lr": lr, "beta1": beta1, "lambda_l1": lambda_l1,
              "gan_mode": gan_mode, "decay_from": decay_from, "seed": seed, "direction": direction,
              "load_size": load_size, "crop_size": crop_size, "val_items": val_items}

    state = _resume_state(out, config, resume)
    torch.manual_seed(seed)
    G, D = load_generator(None, **g_spec).to(dev), load_discriminator(None, **d_spec).to(dev)
    check_image_size(G, *first["A"].shape[-2:], f"generator {arch!r}")
    check_shapes(G, first, arch)
    fused = dev.type == "cuda" or None  # one kernel per step on the GPU; the default elsewhere
    opt_G, opt_D = (torch.optim.Adam(n.parameters(), lr=lr, betas=(beta1, 0.999), fused=fused) for n in (G, D))
    scaler = make_grad_scaler(dev, prec)
    start, train_seconds, val_history = _restore(state, G, D, opt_G, opt_D, scaler, dev)
    G, D = to_channels_last(G), to_channels_last(D)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True

    log_rows = _read_log(out / LOG_FILE, start) if state is not None else []

    def evaluate(step):
        if val_set is None:
            return None
        value = val_l1(G, val_set, dev, prec, num_workers=num_workers)
        val_history.append([step, value])
        return value

    data = {"root": os.path.abspath(dataroot), "direction": direction, "size": list(first["A"].shape[1:]),
            "load_size": load_size, "crop_size": crop_size, "train_items": len(train_set), "val_phase": val_phase,
            "val_items": len(val_set) if val_set is not None else 0}
    training = {"steps_target": steps, "batch_size": batch_size, "lr": lr, "beta1": beta1, "lambda_l1": lambda_l1,
                "gan_mode": gan_mode, "decay_from": decay_from, "seed": seed, "device": str(dev), "precision": prec}

    def summary_spec(step):
        return _summary(g_spec, d_spec, data, {"steps": step, **training, "train_seconds": round(train_seconds, 3)},
                        val_history)

    def snapshot(step):
        return _snapshot(step, config, G, D, opt_G, opt_D, scaler, dev, train_seconds, val_history)

    if start == 0:
        v0 = evaluate(0)
        log_rows = [{"step": 0, "loss_G_GAN": None, "loss_G_L1": None, "loss_D": None, "lr": lr, "val_L1": v0}]

    steps_run = max(0, steps - start)
    if steps_run:
        loader = step_loader(train_set, StepBatches(len(train_set), batch_size, seed, start, steps), seed, start,
                             num_workers, pin_memory=dev.type == "cuda")
        bar = tqdm(total=steps, initial=start, desc="teacher", unit="step", disable=not progress, dynamic_ncols=True)
        # Loss sums stay on the device between log rows: no host sync per step on a GPU.
        sums, n_sum, t_train = torch.zeros(3, device=dev), 0, 0.0
        G.train()
        D.train()
        batches = iter(loader)
        for step in range(start, steps):
            t0 = time.perf_counter()
            batch = next(batches)
            cur_lr = lr * lr_factor(step, steps, decay_from)
            for group in (*opt_G.param_groups, *opt_D.param_groups):
                group["lr"] = cur_lr
            real_a = to_channels_last(batch["A"].to(dev, non_blocking=True))
            real_b = to_channels_last(batch["B"].to(dev, non_blocking=True))
            sums += _pix2pix_step(G, D, opt_G, opt_D, scaler, gan_loss, real_a, real_b, lambda_l1, dev, prec)
            n_sum += 1
            done = step + 1
            eval_now = (eval_every and done % eval_every == 0) or done == steps
            row = done % log_every == 0 or eval_now
            if row or done % save_every == 0:
                mean = (sums / n_sum).tolist()  # a host sync: the time below includes all queued GPU work
            t_train += time.perf_counter() - t0
            bar.update(1)
            if row:
                val = evaluate(done) if eval_now else None
                bar.set_postfix(G_GAN=f"{mean[0]:.3f}", G_L1=f"{mean[1]:.3f}", D=f"{mean[2]:.3f}", refresh=False)
                log_rows.append({"step": done, "loss_G_GAN": mean[0], "loss_G_L1": mean[1], "loss_D": mean[2],
                                 "lr": cur_lr, "val_L1": val})
                sums.zero_()
                n_sum = 0
            if done % save_every == 0 or done == steps:
                train_seconds += t_train
                t_train = 0.0
                _save(out, G, D, snapshot(done), summary_spec(done), log_rows)
        bar.close()
        run_seconds = train_seconds - (float(state["train_seconds"]) if state is not None else 0.0)
    else:
        run_seconds = 0.0
        if not (out / SPEC_FILE).is_file():  # state without the other files (removed by hand): rewrite them
            _save(out, G, D, snapshot(start), summary_spec(start), log_rows)

    return _result(out, summary_spec(steps if steps_run else start), steps_run, run_seconds)


def _snapshot(step, config, G, D, opt_G, opt_D, scaler, dev, train_seconds, val_history) -> dict:
    """Everything to resume at ``step``, as plain tensors/data (loads with ``weights_only=True``)."""
    return {"step": step, "config": config, "G": cpu_state(G), "D": cpu_state(D),
            "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if dev.type == "cuda" else []},
            "train_seconds": train_seconds, "val_history": val_history}


def _restore(state, G, D, opt_G, opt_D, scaler, dev) -> tuple[int, float, list]:
    """Load a saved state into the nets, optimizers, scaler and RNG: ``(step, train_seconds, val_history)``."""
    if state is None:
        return 0, 0.0, []
    G.load_state_dict(state["G"])
    D.load_state_dict(state["D"])
    opt_G.load_state_dict(state["opt_G"])
    opt_D.load_state_dict(state["opt_D"])
    if scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    if dev.type == "cuda" and len(state["rng"]["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["step"]), float(state["train_seconds"]), [list(v) for v in state["val_history"]]


def _summary(g_spec, d_spec, data, training, val_history) -> dict:
    """``teacher.yaml``: the build specs, the data, the training settings and the val L1 history ends."""
    vals = [v for _, v in val_history]
    return {"G": g_spec, "D": d_spec, "data": data, "training": training,
            "val_L1": {"start": vals[0] if vals else None, "end": vals[-1] if vals else None,
                       "end_step": val_history[-1][0] if val_history else None}}


def _result(out: Path, spec: dict, steps_run: int, run_seconds: float) -> dict:
    t = spec["training"]
    return {"out": str(out), "steps": t["steps"], "steps_run": steps_run,
            "steps_per_s": steps_run / run_seconds if steps_run and run_seconds > 0 else None,
            "s_per_step": run_seconds / steps_run if steps_run else None, "train_seconds": t["train_seconds"],
            "device": t["device"], "precision": t["precision"], "val_L1_start": spec["val_L1"]["start"],
            "val_L1_end": spec["val_L1"]["end"], "G": spec["G"], "D": spec["D"],
            "paths": {name: str(out / f) for name, f in (("G", G_FILE), ("D", D_FILE), ("spec", SPEC_FILE),
                                                         ("state", STATE_FILE), ("log", LOG_FILE))}}


# --------------------------------------------------------------------------- demo

# The demo teacher: small enough for a laptop CPU. The default task is gray→color: on the demo set's
# val photos (other sources than train) its val L1 halves within the demo's steps, while edges→photo's
# rises above the constant-colour baseline at this data size and step count (measured: 0.52 → 0.74).
DEMO_TASK = "gray2color"
DEMO_TEACHERS = {
    "quick": {"size": 64, "arch": "unet_64", "ngf": 8, "ndf": 8, "steps": 200},
    "default": {"size": 128, "arch": "unet_128", "ngf": 16, "ndf": 16, "steps": 600},
}


def cache_dir() -> Path:
    """Where demo data and models are kept between runs: ``$GANPRUNE_CACHE``, else the user cache dir."""
    env = os.environ.get("GANPRUNE_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs
    return Path(platformdirs.user_cache_dir("ganprune"))


def demo_teacher(root=None, quick: bool = False, task: str = DEMO_TASK, device="auto",
                 precision: str = "auto", progress: bool = True) -> dict:
    """Build a demo set (``task`` as in ``make_demo``) and train the demo teacher on it under ``root``
    (default: the cache). Both are reused when already complete, so a rerun costs seconds. Returns the
    teacher summary plus ``dataroot`` and ``dataset`` (the make_demo summary)."""
    from ganprune.data.demo import make_demo
    cfg = DEMO_TEACHERS["quick" if quick else "default"]
    root = Path(root) if root is not None else cache_dir() / "demo"
    data = make_demo(root / f"{task}_{cfg['size']}", size=cfg["size"], task=task)
    out = root / f"teacher_{task}_{cfg['arch']}_ngf{cfg['ngf']}_{cfg['size']}"
    summary = train_teacher(data["out"], out, arch=cfg["arch"], ngf=cfg["ngf"], ndf=cfg["ndf"], steps=cfg["steps"],
                            save_every=100, eval_every=max(100, cfg["steps"] // 4), device=device,
                            precision=precision, progress=progress)
    return {**summary, "dataroot": data["out"], "dataset": data}
