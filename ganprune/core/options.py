"""Every option a user sets, declared once: name, default, type, allowed range, help.

The command line, config files, NNI's trial config and the Python API all go through ``resolve``: a
value of the wrong type, out of range, not finite, or not one of the choices is refused in one line
that names the option, before any heavy work starts. Config files are read by ``read_config`` (UTF-8
text, YAML without aliases, a mapping at the top level; unknown keys refused by ``resolve``).

This module knows nothing of argparse or of the command line: ``ganprune.cli`` builds its parsers
from these declarations, and the pipeline and NNI code resolve plain dicts with them.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping

import yaml

from ganprune.core.errors import UserError
from ganprune.core.guard import DEFAULT_TIMEOUT

NORMS = ("batch", "instance", "none")
MAX_OPSET = 23          # the newest ONNX opset torch 2.x's exporter writes


@dataclass(frozen=True)
class Option:
    """One option. ``kind``: str, path, int, float, budget, budgets (a budget, or two or more as a list or
    comma-separated text: ``check_budgets``), steps (a count or a duration, ``check_steps``), flag (off unless
    given), toggle (--x/--no-x),
    strings (a list of text, repeatable on the command line) or pairs (KEY=VALUE items or a mapping).
    ``None`` is accepted only where it is the default (it means "not given" / "automatic")."""
    name: str
    default: Any = None
    kind: str = "str"
    help: str | None = None
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    metavar: str | None = None
    positional: bool = False
    aliases: tuple = ()       # other names the option is known by (config keys; command-line flags too)

    @property
    def flag(self) -> str:
        return self.name if self.positional else "--" + self.name.replace("_", "-")

    @property
    def alias_flags(self) -> tuple:
        return tuple("--" + a.replace("_", "-") for a in self.aliases)


def _where(option: Option, source: str | None) -> str:
    if source == "cli":
        return option.flag if not option.positional else option.name.upper()
    return f"{source}: {option.name}" if source else option.name


def _number(option: Option, value, source, integer: bool):
    what = "an integer" if integer else "a number"
    if isinstance(value, str):
        try:
            value = int(value.strip()) if integer else float(value.strip())
        except ValueError:
            raise UserError(f"{_where(option, source)}: expected {what}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise UserError(f"{_where(option, source)}: expected {what}, got {value!r}")
    if not math.isfinite(value):
        raise UserError(f"{_where(option, source)}: expected a finite number, got {value!r}")
    low, high = option.min, option.max
    if (low is not None and value < low) or (high is not None and value > high):
        span = (f">= {low:g}" if high is None else f"<= {high:g}" if low is None else f"between {low:g} and {high:g}")
        raise UserError(f"{_where(option, source)} must be {span} (got {value!r})")
    return value


def check_budget(value, name: str = "budget"):
    """A budget spelling (see ``ganprune.search.budget``), checked without building anything: a positive finite
    number, ``"25%"`` (at most 100%), ``"12ms"`` or a number as text."""
    bad = f"{name}: expected a fraction like 0.25, a percentage like '25%', a MAC count or milliseconds like " \
          f"'12ms', got {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UserError(bad)
    text = str(value).strip().lower()
    unit = "ms" if text.endswith("ms") else "%" if text.endswith("%") else ""
    try:
        number = float(text[:len(text) - len(unit)])
    except ValueError:
        raise UserError(bad) from None
    if not math.isfinite(number) or number <= 0 or (unit == "%" and number > 100):
        raise UserError(f"{name}: {value!r} must be positive and finite" + (", at most 100%" if unit == "%" else ""))
    return value


def _budget_key(value) -> tuple:
    """What a checked budget spelling means, to find one budget given twice (``"25%"`` and ``0.25``)."""
    text = str(value).strip().lower()
    if text.endswith("ms"):
        return ("ms", float(text[:-2]))
    number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    return ("fraction", number) if number <= 1 else ("MACs", number)


def check_budgets(value, name: str = "budget"):
    """One budget (``check_budget``) as given, or a family of two or more distinct budgets, from a list or from
    text like ``"25%,10%,5%"``, as a list of their spellings (text stripped)."""
    items = value.split(",") if isinstance(value, str) and "," in value else value
    if not isinstance(items, (list, tuple)):
        return check_budget(value, name)
    if len(items) < 2:
        raise UserError(f"{name}: expected a fraction like 0.25, a percentage like '25%', a MAC count or milliseconds "
                        f"like '12ms', or a list of two or more of them, got {value!r}")
    items = [v.strip() if isinstance(v, str) else v for v in items]
    if any(v == "" for v in items):
        raise UserError(f"{name}: an empty budget in {value!r}; expected budgets separated by commas, like '25%,10%'")
    seen = {}
    for v in items:
        check_budget(v, f"{name} item {v!r}")
        key = _budget_key(v)
        if key in seen:
            raise UserError(f"{name}: the budget {v!r} is given twice ({seen[key]!r} is the same); give each once")
        seen[key] = v
    return list(items)


def budget_list(value) -> list:
    """A checked ``budgets`` value as a list (one budget: a list of one)."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


_SECONDS = {"s": 1.0, "min": 60.0, "h": 3600.0}


def check_steps(value, name: str = "steps"):
    """A length of training: a whole number of steps >= 0 (text numbers converted), or a duration as text:
    ``"90s"``, ``"20min"``, ``"1.5h"`` (kept as given, stripped; ``duration_seconds`` reads it)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise UserError(f"{name}: expected a step count >= 0 or a duration like '20min', got {value!r}")
        return value
    if duration_seconds(value) is None:
        raise UserError(f"{name}: expected a step count like 300 or a duration like '90s', '20min' or '1.5h', "
                        f"got {value!r}")
    return value.strip()


def duration_seconds(value) -> float | None:
    """The seconds a duration such as ``"20min"`` names (positive and finite), None for anything else."""
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    unit = next((u for u in ("min", "s", "h") if text.endswith(u)), None)
    if unit is None:
        return None
    try:
        number = float(text[:-len(unit)])
    except ValueError:
        return None
    return number * _SECONDS[unit] if math.isfinite(number) and number > 0 else None


def check(option: Option, value, source: str | None = None):
    """``value`` checked (and text numbers converted) for ``option``; ``source`` names where it came from:
    None (the Python API), "cli" (the command line) or a config file's path."""
    if value is None and option.default is None:
        return None
    where = _where(option, source)
    kind = option.kind
    if kind == "int":
        value = _number(option, value, source, integer=True)
    elif kind == "float":
        value = float(_number(option, value, source, integer=False))
    elif kind in ("flag", "toggle"):
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
    elif kind == "budget":
        if isinstance(value, (list, tuple)) or (isinstance(value, str) and "," in value):
            raise UserError(f"{where}: expected one budget, got {value!r} (several G budgets, a family, are for "
                            "g_budget of `ganprune search` and `ganprune prune`)")
        value = check_budget(value, where)
    elif kind == "budgets":
        value = check_budgets(value, where)
    elif kind == "steps":
        value = check_steps(value, where)
    elif kind == "path":
        if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
            raise UserError(f"{where}: expected a path (text), got {value!r}")
        value = os.fspath(value)
    elif kind == "strings":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
            raise UserError(f"{where}: expected text or a list of text, got {value!r}")
        value = list(items)
    elif kind == "pairs":
        value = _pairs(value, where)
    elif not isinstance(value, str):
        raise UserError(f"{where}: expected text, got {value!r}")
    if option.choices is not None and value not in option.choices:
        raise UserError(f"{where}: expected one of {', '.join(map(str, option.choices))}, got {value!r}")
    return value


def _pairs(value, where: str) -> dict:
    """KEY=VALUE items (values read as YAML: 0.3, true, [a, b]) or a mapping, as a dict."""
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise UserError(f"{where}: expected a mapping of option names to values, got {value!r}")
        return dict(value)
    if not isinstance(value, list):
        raise UserError(f"{where}: expected a mapping of option names to values, got {value!r}")
    parsed = {}
    for item in value:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise UserError(f"{where} {item!r}: expected KEY=VALUE")
        try:
            parsed[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise UserError(f"{where} {item!r}: value is not valid YAML") from None
    return parsed


def defaults(schema: Iterable[Option]) -> dict:
    return {o.name: o.default for o in schema}


def resolve(schema: Iterable[Option], values: Mapping | None = None, *, source: str | None = None,
            base: Mapping | None = None) -> dict:
    """Every option of ``schema``: ``base`` (default: the declared defaults) overlaid by ``values``, each
    checked. Keys may use dashes or underscores; unknown keys are refused, naming the known ones."""
    known = {o.name: o for o in schema}
    alias = {a: o.name for o in known.values() for a in o.aliases}
    out = dict(base) if base is not None else defaults(known.values())
    if values is not None and not isinstance(values, Mapping):
        raise UserError(f"{source or 'options'}: expected a mapping of option names to values, got "
                        f"{type(values).__name__}")
    for key, value in (values or {}).items():
        name = str(key).replace("-", "_")
        name = alias.get(name, name)
        if name not in known:
            prefix = f"{source}: " if source and source != "cli" else ""
            raise UserError(f"{prefix}unknown option {key!r}; known options: {', '.join(sorted(known))}")
        out[name] = check(known[name], value, source)
    return out


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors/aliases: a config never needs them, and nested aliases blow up in memory."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"aliases (*{event.anchor}) are not allowed",
                                              event.start_mark)
        return super().compose_node(parent, index)


def read_yaml(path, what: str = "file"):
    """The YAML document in ``path`` (UTF-8, no aliases); any failure is one line naming the file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise UserError(f"{path}: cannot read {what} ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: {what} is not UTF-8 text (byte {exc.start})") from None
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None


def read_config(path) -> dict:
    """A config file's option values (not yet checked: ``resolve`` does that against a schema)."""
    values = read_yaml(path, "config")
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"{os.fspath(path)}: expected a mapping of option names to values at the top level")
    return values


# --------------------------------------------------------------------------- options several commands share
# Declared once here; a command that needs other wording for one of them says so with dataclasses.replace.

NGF = Option("ngf", 64, "int", min=1, help="built-in G: filters in the first conv layer")
NDF = Option("ndf", 64, "int", min=1, help="built-in D: filters in the first conv layer")
NORM = Option("norm", "batch", choices=NORMS, help="built-in G (and D): normalisation layer")
N_LAYERS_D = Option("n_layers_d", 3, "int", min=1, help="layers of the n_layers D")
INPUT_NC = Option("input_nc", 3, "int", min=1, help="input image channels")
OUTPUT_NC = Option("output_nc", 3, "int", min=1, help="output image channels")
DIRECTION = Option("direction", "AtoB", choices=("AtoB", "BtoA"), help="which side is G's input")
LOAD_SIZE = Option("load_size", None, "int", min=1, help="resize images to this square (default: keep)")
CROP_SIZE = Option("crop_size", None, "int", min=1, help="random crop for training, resize for val")
MODE = Option("mode", "aligned", choices=("aligned", "unaligned"), aliases=("dataset_mode",),
              help="dataset layout: aligned (pix2pix: train/ val/) or unaligned (CycleGAN: trainA trainB testA "
              "testB) (default aligned; dataset_mode is the same option)")
DEVICE = Option("device", "auto", help="auto, cpu, cuda or cuda:N")
PRECISION = Option("precision", "auto", help="auto, fp32, bf16, fp16 (auto: bf16/fp16 on CUDA, fp32 on CPU)")
RECIPE = Option("recipe", "density", help="fine-tuning recipe (`ganprune finetune --help` lists them)")
BATCH_SIZE = Option("batch_size", 1, "int", min=1, help="per process")
SAVE_EVERY = Option("save_every", 500, "int", min=1, help="fine-tuning steps between resumable checkpoints (default "
                    "500; a killed fine-tune resumes from the last one, bit-identically)")

# --------------------------------------------------------------------------- the shared option groups

PAIR = (
    Option("teacher", kind="path", help="folder written by `ganprune train-teacher` (holds both checkpoints and "
           "their options)"),
    Option("generator", kind="path", help="reference-format generator checkpoint (latest_net_G.pth)"),
    Option("g_arch", "unet_256", help="generator arch: a built-in name or your own pkg.module:Class (default "
           "unet_256)"),
    Option("g_arch_options", None, "pairs", metavar="KEY=VALUE", aliases=("g_arch_option",),
           help="keyword argument of your own G class (pkg.module:Class), repeatable; only these are passed to it "
           "(default none); in a config a mapping g_arch_options: {key: value}"),
    NGF,
    NORM,
    Option("dropout", False, "flag", help="built-in G: it was built with dropout (default off)"),
    Option("discriminator", kind="path", help="reference-format discriminator checkpoint (latest_net_D.pth); "
           "leave it out to prune G alone: D is then built fresh (the PatchGAN below) for fine-tuning, and the "
           "search scores G only (default: none)"),
    Option("d_arch", "basic", help="discriminator arch: basic, n_layers, pixel or pkg.module:Class (default basic)"),
    Option("d_arch_options", None, "pairs", metavar="KEY=VALUE", aliases=("d_arch_option",),
           help="keyword argument of your own D class, repeatable (default none)"),
    NDF,
    Option("d_norm", None, choices=NORMS, help="discriminator norm (default: same as --norm)"),
    N_LAYERS_D,
    INPUT_NC,
    OUTPUT_NC,
    Option("unconditional_d", None, "toggle", help="D sees only images (CycleGAN), not cat(A, B) (default: from "
           "the data: unconditional for unaligned, conditional for aligned)"),
)

SEARCH_DATA = (
    Option("dataroot", kind="path", help="dataset folder (reference aligned or unaligned layout)"),
    MODE,
    DIRECTION,
    Option("size", None, "int", min=1, help="image size (default: the images' own)"),
    Option("phase", "train", help="search split (never val/test; default train)"),
    Option("calib_images", 16, "int", min=1, help="calibration images: the first N of the search split "
           "(default 16)"),
    Option("calib_batch", 8, "int", min=1, help="calibration batch size (default 8)"),
    Option("out", kind="path", help="output folder: history.csv (resumable), widths.yaml, pareto.csv"),
)

SEARCH_ONLY = (
    Option("g_budget", "0.25", "budgets", help="G budget: MACs as a fraction, percentage or absolute count, "
           "or predicted latency like '12ms'; several, comma-separated (0.25,0.1,0.05), search one supernet's "
           "family: one result per budget in OUT/g<budget>/, a table in OUT/family.md (default 0.25)"),
    Option("d_budget", "0.5", "budget", help="D budget, same spellings (default 0.5)"),
    Option("latency_table", kind="path", help="a saved latency table (YAML) for a G budget in ms (default: time G "
           "once and keep the table in --out)"),
    Option("latency_backend", "onnxruntime", help="what a ms budget is timed on, ideally the runtime you ship: "
           "onnxruntime (the exported G.onnx), openvino, executorch or torch[+fold][+cl] (default onnxruntime)"),
    Option("latency_threads", 2, "int", min=1, help="CPU threads a ms budget is timed with: the count you deploy "
           "with (default 2)"),
    Option("g_agent", "template", help="agent for G (see `ganprune agents`; default template: uniform widths "
           "filled to the budget, which tied or beat the searches on the benchmarks, docs/benchmarks.md)"),
    Option("d_agent", "template", help="agent for D (default template)"),
    Option("g_agent_options", None, "pairs", metavar="KEY=VALUE", aliases=("g_agent_option",),
           help="option of the G agent (e.g. patience=4; see `ganprune agents`), repeatable (default none); in a "
           "config a mapping g_agent_options: {key: value}"),
    Option("d_agent_options", None, "pairs", metavar="KEY=VALUE", aliases=("d_agent_option",),
           help="option of the D agent, repeatable (default none)"),
    Option("agent_file", kind="path", help="a .py file that registers extra agents (default none)"),
    Option("rounds", None, "int", min=1, help="candidate pairs to evaluate (default: enough for the agents to "
           "reach the budget and refine: sized from the search space, at least 60)"),
    Option("seed", 0, "int", min=0, help="random seed (default 0): same seed, same widths"),
    Option("embedding", "pixels", help="density feature space: pixels, teacher_d, inception (default pixels)"),
    Option("m", 8, "int", min=1, help="samples per local neighbourhood (default 8)"),
    Option("discrepancy", "mmd", choices=("mmd", "nll", "both"), help="density discrepancy (default mmd)"),
    Option("l1_weight", 0.0, "float", min=0, help="weight of L1 to the teacher output in the G score (default 0)"),
    Option("balance_weight", 1.0, "float", min=0, help="weight of the G/D balance in the G score (default 1)"),
    Option("g_space", kind="path", help="search-space YAML for G (default: search_spaces/<g-arch>.yaml)"),
    Option("d_space", kind="path", help="search-space YAML for D (default: search_spaces/<d-arch>.yaml)"),
    Option("importance", "l2", choices=("l1", "l2", "bn_scale"), help="channel ranking kept when pruning "
           "(default l2)"),
    Option("on_agent_error", "stop", choices=("stop", "skip"), help="a failing agent stops the search or its "
           "round is skipped (default stop)"),
    Option("agent_timeout", DEFAULT_TIMEOUT, "float", min=0, help="seconds one agent call (ask/tell) may take "
           f"before the search stops with an error (default {DEFAULT_TIMEOUT:g}; 0: no limit)"),
    Option("fill", True, "toggle", help="grow the winner into the budget it leaves unused (default on; --no-fill "
           "keeps it as found)"),
    Option("supernet_steps", 300, "steps", help="train a weight-sharing supernet of G for this many steps, or "
           "for about as long as a duration says (a number with s, min or h appended: a few steps are timed first "
           "and the count they give is kept for resuming), before the search, score candidates as its slices and fine-tune the winner from its slice (default "
           "300; 0: score weights inherited from the teacher)"),
    Option("supernet_lambda_gan", 0.0, "float", min=0, help="weight of an adversarial term in the supernet's "
           "training: a copy of the teacher's D is trained against the slices and each slice's loss adds "
           "lambda·GAN(D(slice)) to its L1 to the teacher (weight 1; 0.01 is pix2pix's GAN:L1 ratio); needs the "
           "teacher's D (default 0: L1 alone)"),
    Option("finalists", 0, "int", min=0, help="after the search, distil its best N distinct candidates and uniform "
           "pruning briefly from where fine-tuning would start and pick the best of them by the same score (default "
           "0: off: it ranks candidates better, but its winners measured no better: docs/benchmarks.md)"),
    Option("finalist_steps", 60, "int", min=1, help="L1-distillation steps per finalist (default 60)"),
)

ALLOW_ARCH = Option("allow_arch", None, "strings", metavar="PKG.MODULE:CLASS", help="allow this network class to "
                    "be imported when a file (pruned model, teacher.yaml) names it; archs you give with "
                    "--arch/--g-arch/--d-arch are allowed already (repeatable)")
"""Taken by every command (and its config file); the search, pipeline and NNI honour it from the API too."""

SEARCH = PAIR + SEARCH_DATA + SEARCH_ONLY + (ALLOW_ARCH,)
"""``ganprune search``: the pair, the data and the search."""

STAGES = ("search", "prune", "finetune", "evaluate", "export", "report")

PIPELINE = SEARCH + (
    Option("widths", kind="path", help="a widths.yaml (from `ganprune search` or `ganprune nni run`) to prune to "
           "instead of searching (default: search)"),
    RECIPE,
    Option("finetune_steps", 1000, "int", min=0, help="fine-tuning steps (default 1000)"),
    replace(BATCH_SIZE, help="fine-tuning batch size"),
    SAVE_EVERY,
    Option("fid", True, "toggle", help="FID/KID in the evaluation (default on; the slow part on a CPU)"),
    Option("eval_images", None, "int", min=1, help="evaluate on the first N val images (default all)"),
    Option("latency", True, "toggle", help="CPU latency, torch and onnxruntime, batch 1 (default on)"),
)
"""``ganprune prune`` (``run_pipeline``'s config): the search options plus fine-tuning and evaluation."""

NOT_FOR_NNI = ("on_agent_error", "agent_timeout", "supernet_steps", "supernet_lambda_gan", "finalists",
               "finalist_steps")
"""Search options the NNI commands do not take: an NNI tuner that fails stops the experiment; trials score
weights inherited from the teacher (each trial is its own process: a supernet would be trained per trial) and
NNI picks the best trial itself (no finalists)."""

NNI = tuple(replace(o, kind="budget", help=o.help.split(";")[0] + f" (default {o.default})")   # one G budget
            if o.name == "g_budget" else o for o in SEARCH if o.name not in NOT_FOR_NNI) + (
    Option("infeasible_penalty", 1.0, "float", min=0, help="added to the objective (NNI 'default') of an "
           "over-budget candidate, scaled by 1 + its relative excess over each budget (default 1.0)"),
    Option("repair", True, "toggle", help="an NNI tuner's over-budget candidate is shrunk into the budgets "
           "(widest group first) and scored as that, so every trial is a usable result (default on; the 'ours' "
           "tuner's agents are never repaired: they learn from over-budget scores)"),
)
"""Every ``ganprune nni`` command: the search options (an NNI tuner that fails stops the experiment, so
no ``on_agent_error`` or ``agent_timeout``) plus the penalty of over-budget candidates; one YAML drives them all."""

TRAINING = (
    BATCH_SIZE,
    Option("lr", 2e-4, "float", min=0),
    Option("beta1", 0.5, "float", min=0, max=1),
    Option("decay_from", 0.5, "float", min=0, max=1,
           help="fraction of steps after which the LR decays linearly to 0 (default 0.5)"),
    Option("seed", 0, "int", min=0),
    DEVICE,
    PRECISION,
    Option("num_workers", 0, "int", min=0, help="DataLoader worker processes (default 0)"),
    Option("resume", True, "toggle", help="continue the resumable run --out holds (default on; --no-resume starts "
           "over)"),
)

FINETUNE_RUN = (
    Option("dataroot", kind="path", help="dataset folder (aligned: train/ val/; unaligned: trainA trainB testA testB)"),
    MODE,
    DIRECTION,
    LOAD_SIZE,
    CROP_SIZE,
    RECIPE,
    Option("recipe_options", None, "pairs", metavar="KEY=VALUE", aliases=("recipe_option",),
           help="recipe option, repeatable (values are YAML: 0.3, true, [noise, jitter]); in --config a mapping "
           "recipe_options: {key: value}"),
    Option("out", kind="path", help="output folder: G.pt, D.pt (pruned format), state.pt, log.csv"),
    Option("steps", 10000, "int", min=0, help="total training steps (default 10000)"),
    *TRAINING,
    SAVE_EVERY,
    Option("eval_every", 1000, "int", min=0, help="steps between val L1 checks (0: start and end)"),
)
"""What ``ganprune finetune`` hands to ``ganprune.pipeline.finetune_pruned`` (the data) and on to
``ganprune.train.trainer.finetune`` (the training settings) by name; the trainer's defaults are these."""

FINETUNE = (
    Option("pruned_g", kind="path", help="pruned generator file (written by `ganprune prune`/save_pruned)"),
    Option("pruned_d", kind="path", help="pruned discriminator file (default: a trainable copy of the teacher's D)"),
    *PAIR,
    *FINETUNE_RUN,
)
"""``ganprune finetune``: the pruned pair, its teacher, the data and the training settings."""

TEACHER = (
    Option("dataroot", kind="path", help="aligned dataset folder (train/ and val/ or test/ of A|B images)"),
    Option("out", kind="path", help="output folder: latest_net_G/D.pth, teacher.yaml, train_state.pt, log.csv"),
    Option("arch", "unet_128", help="generator arch (default unet_128; see `ganprune archs`)"),
    NGF,
    Option("dropout", True, "toggle", help="dropout in G, as pix2pix trains it (default on; --no-dropout: none)"),
    Option("netD", "basic", help="discriminator arch: basic, n_layers, pixel (default basic)"),
    NDF,
    N_LAYERS_D,
    NORM,
    DIRECTION,
    LOAD_SIZE,
    CROP_SIZE,
    Option("steps", 20000, "int", min=0, help="total training steps (default 20000)"),
    Option("lambda_l1", 100.0, "float", min=0),
    Option("gan_mode", "vanilla", choices=("vanilla", "lsgan", "hinge")),
    *TRAINING,
    Option("save_every", 1000, "int", min=1, help="steps between checkpoints (default 1000)"),
    Option("eval_every", 2000, "int", min=0, help="steps between val L1 checks (0: start and end)"),
    Option("log_every", 10, "int", min=1, help="steps per log.csv row (default 10)"),
    Option("val_items", None, "int", min=1, help="use only the first N val images (default: all)"),
)
"""``ganprune train-teacher`` and ``ganprune.train.teacher.train_teacher``: the keywords it takes, by name."""



def conditional_from_options(o: Mapping) -> bool:
    """Whether D sees cat(A, B), from the options: as ``unconditional_d`` says, else from the data (unaligned:
    images only). ``pair_specs`` stores it in the D spec, where ``models.registry.conditional_d`` reads it."""
    if o.get("unconditional_d") is not None:
        return not o["unconditional_d"]
    return o.get("mode", "aligned") != "unaligned"


def pair_specs(o: Mapping) -> tuple[dict, dict]:
    """The G and D build options (``load_generator``/``load_discriminator`` keywords) of resolved pair options;
    the D spec also carries the ``conditional`` fact (whether D sees cat(A, B)), set here once.
    Your own class (``pkg.module:Class``) gets only its own ``*_arch_options`` and its kind, never the
    reference nets' options (ngf, norm, ...)."""
    if ":" in o["g_arch"]:
        g_spec = {"arch": o["g_arch"], "kind": "generator", **(o.get("g_arch_options") or {})}
    else:
        g_spec = {"arch": o["g_arch"], "ngf": o["ngf"], "norm": o["norm"], "input_nc": o["input_nc"],
                  "output_nc": o["output_nc"], "dropout": bool(o["dropout"])}
    if ":" in o["d_arch"]:
        d_spec = {"arch": o["d_arch"], "kind": "discriminator", **(o.get("d_arch_options") or {}),
                  "conditional": conditional_from_options(o)}
    else:
        d_in = o["input_nc"] + o["output_nc"] if conditional_from_options(o) else o["output_nc"]
        d_spec = {"arch": o["d_arch"], "ndf": o["ndf"], "norm": o["d_norm"] or o["norm"], "input_nc": d_in,
                  "n_layers": o["n_layers_d"], "conditional": conditional_from_options(o)}
    return g_spec, d_spec


def search_keywords(o: Mapping) -> dict:
    """``run_search`` keyword arguments from resolved search options (shared by ``search`` and ``prune``)."""
    names = ("mode", "direction", "size", "phase", "calib_images", "calib_batch", "g_budget", "d_budget", "g_agent",
             "d_agent", "agent_file", "rounds", "seed", "on_agent_error", "agent_timeout", "fill", "latency_table",
             "latency_backend", "latency_threads", "supernet_steps", "supernet_lambda_gan", "g_agent_options",
             "d_agent_options", "finalists", "finalist_steps")
    return {**{k: o[k] for k in names}, **evaluator_keywords(o)}


def evaluator_keywords(o: Mapping) -> dict:
    """``build_evaluator`` keyword arguments from resolved search options."""
    return dict(embedding=o["embedding"], m=o["m"], discrepancy=o["discrepancy"], l1_weight=o["l1_weight"],
                balance_weight=o["balance_weight"], g_space_file=o["g_space"], d_space_file=o["d_space"],
                importance=o["importance"])
