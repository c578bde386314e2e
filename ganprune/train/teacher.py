"""Train a Pix2Pix teacher (G and D) on an aligned dataset, resumably, in the reference format.

Why here: pruning needs a trained dense pair, and users without one (or the demo) need a way to get
it. The training itself is the fine-tuning trainer running the ``pix2pix`` recipe without teachers (a
conditional PatchGAN D on cat(A, B), G loss GAN + λ·L1, Adam(lr, β1, 0.999), constant LR then linear
decay to zero); this module builds the dense pair and the data, and ``TeacherFiles`` writes what
teacher training has always written: ``latest_net_G.pth``/``latest_net_D.pth`` (reference state dicts),
``teacher.yaml``, ``train_state.pt`` and ``log.csv``.

Resuming is exact on the CPU (see ``ganprune.train.trainer``). A folder written before teacher
training ran on the trainer still loads, and its older state file is read and continued.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import torch
import yaml
from torch import nn

from ganprune.data.datasets import AlignedDataset, held_out_phase
from ganprune.core.device import pick_device, resolve_precision
from ganprune.core.errors import UserError
from ganprune.core.options import TEACHER, resolve
from ganprune.train.outputs import RunFiles
from ganprune.core.io import atomic_torch_save, atomic_write_yaml
from ganprune.models.sizes import check_image_size
from ganprune.models.checkpoint import load_discriminator, load_generator
from ganprune.models.registry import DISCRIMINATORS, GENERATORS, check_arch_allowed, is_class_path
from ganprune.train.common import SeededItems, check_shapes, write_log

G_FILE, D_FILE, SPEC_FILE, STATE_FILE, LOG_FILE = ("latest_net_G.pth", "latest_net_D.pth", "teacher.yaml",
                                                   "train_state.pt", "log.csv")
LOG_COLUMNS = ["step", "loss_G_GAN", "loss_G_L1", "loss_D", "lr", "val_L1"]


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


# --------------------------------------------------------------------------- the folder

class TeacherFiles(RunFiles):
    """The reference-format folder: the trainer's state plus plain state dicts, ``teacher.yaml`` (specs,
    data, settings, val L1 ends) and ``log.csv`` in the reference columns (``loss_G_L1`` is λ·L1)."""

    FILES = {"G": G_FILE, "D": D_FILE, "spec": SPEC_FILE, "state": STATE_FILE, "log": LOG_FILE}
    label = "train-teacher"

    def __init__(self, out, g_spec: dict, d_spec: dict, data: dict, training: dict):
        super().__init__(out, g_spec, d_spec)
        self.data, self.training = data, training

    def read_state(self) -> dict | None:
        if not self.path("state").is_file() and self.path("G").exists():
            raise UserError(f"{self.path('G')}: exists but no {STATE_FILE} beside it (not written by "
                            "train-teacher?); use another out folder or resume=False (--no-resume) to overwrite it")
        return super().read_state()

    def upgrade(self, state):
        """A state written before teacher training ran on the trainer (flat G/D/opt_G/opt_D), in its layout."""
        if not (isinstance(state, dict) and {"opt_G", "opt_D", "config"} <= set(state) and "nets" not in state):
            return state
        c = state["config"]

        def with_base_lr(opt: dict) -> dict:
            return {**opt, "param_groups": [{**g, "base_lr": c["lr"]} for g in opt["param_groups"]]}
        config = {"recipe": "pix2pix", "recipe_options": {"gan_mode": c["gan_mode"], "lambda_l1": float(c["lambda_l1"])},
                  **{k: c[k] for k in ("batch_size", "lr", "beta1", "decay_from", "seed")}, "world_size": 1,
                  "paired": True, **{k: c[k] for k in _SETTINGS}}
        return {"step": int(state["step"]), "config": config, "nets": {"G": state["G"], "D": state["D"]},
                "optimizers": {"G": with_base_lr(state["opt_G"]), "D": with_base_lr(state["opt_D"])},
                "scaler": state.get("scaler") or {}, "recipe": {}, "rng": state["rng"],
                "train_seconds": float(state["train_seconds"]), "log": _old_log(self.path("log"), int(state["step"]))}

    def prepare(self, G, D, first, conditional_D) -> None:
        pass  # dense nets: their specs are known and the files are plain state dicts

    def write(self, state: dict, G, D) -> None:
        atomic_torch_save(state, self.path("state"))
        atomic_torch_save(state["nets"]["G"], self.path("G"))
        atomic_torch_save(state["nets"]["D"], self.path("D"))
        atomic_write_yaml(self.path("spec"), self.summary(state))
        lam = state["config"]["recipe_options"]["lambda_l1"]
        write_log(self.path("log"), [_reference_row(r, lam) for r in state["log"]], LOG_COLUMNS)
        self.last_state = state

    def complete(self) -> bool:
        return self.path("spec").is_file()

    def summary(self, state: dict) -> dict:
        """``teacher.yaml``: the build specs, the data, the training settings and the val L1 history ends."""
        vals = [(r["step"], r["val_L1"]) for r in state["log"] if r.get("val_L1") is not None]
        return {"G": self.specs["G"], "D": self.specs["D"], "data": self.data,
                "training": {"steps": int(state["step"]), **self.training,
                             "train_seconds": round(float(state["train_seconds"]), 3)},
                "val_L1": {"start": vals[0][1] if vals else None, "end": vals[-1][1] if vals else None,
                           "end_step": vals[-1][0] if vals else None}}


# Build and data settings a resumed run must share with the saved one (the trainer checks its own).
_SETTINGS = ("G", "D", "direction", "load_size", "crop_size", "val_items")


def _reference_row(row: dict, lambda_l1: float) -> dict:
    """A trainer log row (means of the pix2pix recipe's logs) in the reference columns; rows read from an
    older folder already have them."""
    l1 = row.get("G_L1")
    return {"step": row["step"], "loss_G_GAN": row.get("loss_G_GAN", row.get("G_adv")),
            "loss_G_L1": row.get("loss_G_L1", None if l1 is None else lambda_l1 * l1),
            "loss_D": row.get("loss_D"), "lr": row["lr"], "val_L1": row.get("val_L1")}


def _old_log(path: Path, upto: int) -> list[dict]:
    """An older folder's log rows up to its saved step, as plain numbers (None where empty)."""
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return []
    if "step" not in frame:
        return []
    rows = frame[frame["step"] <= upto].to_dict("records")
    return [{k: (int(v) if k == "step" else float(v)) for k, v in row.items() if not pd.isna(v)} for row in rows]


# --------------------------------------------------------------------------- training

def train_teacher(dataroot, out, *, progress: bool = True, **options) -> dict:
    """Train (or continue training) a Pix2Pix teacher into ``out``; returns a summary dict.

    ``options``: ``ganprune train-teacher``'s, by name (``ganprune.core.options.TEACHER``: arch, ngf, steps,
    lr, eval_every, resume, ...); their defaults and checks are the command line's.
    Writes ``latest_net_G.pth``/``latest_net_D.pth`` (reference-format state dicts), ``teacher.yaml``
    (specs, data, steps done, val L1), ``train_state.pt`` (everything to resume) and ``log.csv`` (mean
    losses every ``log_every`` steps — ``loss_G_L1`` is λ·L1 as in the reference logs — and val L1 at
    evaluations: step 0, every ``eval_every`` steps (0: only start and end) and the end; ``val_items``
    caps the val images used, first ones in file order). With
    ``resume`` a rerun continues from the last save; a finished run returns at once.
    """
    from ganprune.train.trainer import finetune
    o = resolve(TEACHER, {**options, "dataroot": dataroot, "out": out})
    dataroot, out, direction = o["dataroot"], Path(o["out"]), o["direction"]
    load_size, crop_size, val_items, seed = o["load_size"], o["crop_size"], o["val_items"], o["seed"]
    if not os.path.isdir(os.path.join(dataroot, "train")):
        raise UserError(f"{dataroot}: expected an aligned dataset folder with a train/ subfolder of A|B images")
    dev = pick_device(o["device"])
    prec = resolve_precision(dev, o["precision"])
    train_set = AlignedDataset(dataroot, "train", direction=direction, load_size=load_size, crop_size=crop_size)
    first = SeededItems(train_set)[(0, seed)]  # shapes only; leaves the global RNG alone
    val_phase = held_out_phase(dataroot)
    # Evaluation phases resize straight to crop_size (no random crop); no flip either.
    val_set = (AlignedDataset(dataroot, val_phase, direction=direction, load_size=load_size, crop_size=crop_size,
                              flip=False, max_items=val_items) if val_phase else None)

    g_spec = {"arch": o["arch"], "ngf": o["ngf"], "norm": o["norm"], "dropout": o["dropout"],
              "input_nc": int(first["A"].shape[0]), "output_nc": int(first["B"].shape[0])}
    d_spec = {"arch": o["netD"], "ndf": o["ndf"], "norm": o["norm"], "n_layers": o["n_layers_d"],
              "input_nc": g_spec["input_nc"] + g_spec["output_nc"]}
    torch.manual_seed(seed)
    G, D = load_generator(None, **g_spec), load_discriminator(None, **d_spec)
    check_image_size(G, *first["A"].shape[-2:], f"generator {o['arch']!r}")
    check_shapes(G, first, o["arch"])

    data = {"root": os.path.abspath(dataroot), "direction": direction, "size": list(first["A"].shape[1:]),
            "load_size": load_size, "crop_size": crop_size, "train_items": len(train_set), "val_phase": val_phase,
            "val_items": len(val_set) if val_set is not None else 0}
    training = {"steps_target": o["steps"], **{k: o[k] for k in ("batch_size", "lr", "beta1", "lambda_l1", "gan_mode",
                                                                 "decay_from", "seed")},
                "device": str(dev), "precision": prec}
    schedule = {k: o[k] for k in ("batch_size", "lr", "beta1", "decay_from", "seed")}
    recipe_options = {"gan_mode": o["gan_mode"], "lambda_l1": o["lambda_l1"]}
    files = TeacherFiles(out, g_spec, d_spec, data, training)
    settings = {"G": g_spec, "D": d_spec, "direction": direction, "load_size": load_size, "crop_size": crop_size,
                "val_items": val_items}
    r = finetune(G, D, None, None, train_set, recipe="pix2pix", steps=o["steps"], **schedule, device=o["device"],
                 precision=prec, save_every=o["save_every"], eval_every=o["eval_every"], eval_dataset=val_set,
                 resume=o["resume"], recipe_options=recipe_options, progress=progress, num_workers=o["num_workers"],
                 log_every=o["log_every"], files=files, settings=settings,
                 d_spec={**d_spec, "conditional": True})  # the reference pix2pix D sees cat(A, B)
    spec = files.summary(files.last_state)
    t = spec["training"]
    return {"out": str(out), "steps": t["steps"], "steps_run": r["steps_run"], "steps_per_s": r["steps_per_s"],
            "s_per_step": 1 / r["steps_per_s"] if r["steps_per_s"] else None, "train_seconds": t["train_seconds"],
            "device": t["device"], "precision": t["precision"], "val_L1_start": spec["val_L1"]["start"],
            "val_L1_end": spec["val_L1"]["end"], "G": spec["G"], "D": spec["D"], "paths": files.paths()}


# --------------------------------------------------------------------------- demo

# The demo teacher: small enough for a laptop CPU. The default task is gray→color: on the demo set's
# val photos (other sources than train) its val L1 falls within the demo's steps, while edges→photo's
# rises above the constant-colour baseline at this data size and step count (docs/benchmarks.md).
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
