"""Output paths checked before any work starts: an output never replaces an input, and it can be written.

A command's inputs are the options that name files or folders it reads; its output is a file it writes
(``export --onnx``) or a folder plus the names it writes inside it (``finetune --out``: ``G.pt``, ...).
``check_paths`` refuses, in one line: an output file that is one of the inputs (also through a symlink or
hard link) or an existing folder; an output folder that is an existing file; an input that the command
would write over inside its output folder (``finetune --pruned-g DIR/G.pt --out DIR``); an output that
cannot be created or written (a read-only folder).
"""
from __future__ import annotations

import os
import tempfile

from ganprune.core.errors import UserError

# Options that name something a command reads.
INPUT_OPTIONS = ("config", "teacher", "generator", "discriminator", "pruned", "pruned_g", "pruned_d", "dataroot",
                 "agent_file", "g_space", "d_space", "space", "latency_table", "fid_weights", "segmenter",
                 "teacher_for_reference", "widths", "experiment_dir")
# Commands whose output is one file: command -> the options that can name it.
FILE_OUTPUTS = {"export": ("onnx", "out"), "space": ("csv",)}
# What each command writes inside its output folder ("name/": a folder it fills). Commands not listed write
# only names no input can have (their own new folder) and get the folder checks alone.
WRITES = {
    "prune": ("config.yaml", "log.txt", ".done/", ".lock", "search/", "finetune/", "evaluate/", "pruned_G.pt",
              "pruned_D.pt", "G.onnx", "metrics.csv", "metrics.md", "pareto.png", "grid.png", "widths.yaml", "history.csv",
              "family.csv", "family.md"),
    "search": ("history.csv", "widths.yaml", "pareto.csv", "latency_G.yaml", "latency_D.yaml", ".lock", "family.csv",
               "family.md"),
    "finetune": ("G.pt", "D.pt", "state.pt", "log.csv"),
    "train-teacher": ("latest_net_G.pth", "latest_net_D.pth", "teacher.yaml", "train_state.pt", "log.csv"),
    "eval": ("eval.csv", "eval.md", "grid.png"),
    "nni run": ("trial_config.yaml", "search_space.json", "trial_jobs.json", "history.csv", "widths.yaml",
                "nni-experiments/"),
    "nni space": ("search_space.json",),
    "nni collect": ("history.csv", "widths.yaml"),
    "apply": ("config.yaml", "log.txt", ".done/", ".lock", "search/", "pruned_G.pt", "pruned_D.pt", "widths.yaml",
              "history.csv"),
}


def _is_path(value) -> bool:
    return isinstance(value, (str, os.PathLike)) and os.fspath(value) != ""


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _same(a: str, b: str) -> bool:
    """Same file: equal real paths, or one inode reached by two names (a hard link)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: str, folder: str) -> str | None:
    """``path`` relative to ``folder`` when it lies inside it (real paths), else None."""
    rel = os.path.relpath(os.path.realpath(path), os.path.realpath(folder))
    return None if rel == "." or rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


def check_writable(path, option: str = "--out", folder: bool = True) -> None:
    """``path`` (a folder, or a file when ``folder`` is False) can be created or written: its nearest
    existing ancestor is a folder we can create entries in (probed, so read-only mounts count too)."""
    path = os.path.abspath(os.fspath(path))
    if folder and os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{option} {path}: is an existing file; expected a folder (new or earlier output)")
    if not folder and os.path.isdir(path):
        raise UserError(f"{option} {path}: is a folder; expected a file name to write")
    probe = path if folder and os.path.isdir(path) else os.path.dirname(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UserError(f"{option} {path}: cannot be created, {probe} is a file")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".ganprune-probe-", dir=probe))
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write in {probe} ({exc.strerror or exc}); choose a writable "
                        "location") from None


def check_paths(command: str, options: dict) -> None:
    """Refuse (one line) outputs of ``command`` that are, or would replace, one of its inputs, or cannot be
    written; ``options`` are the command's option values by name (unset or non-path values are skipped)."""
    inputs = {k: os.fspath(options[k]) for k in INPUT_OPTIONS if _is_path(options.get(k))}
    if command in FILE_OUTPUTS:
        for option in FILE_OUTPUTS[command]:
            if _is_path(options.get(option)):
                _check_file_output(_flag(option), os.fspath(options[option]), inputs)
        return
    out = options.get("out")
    if not _is_path(out):
        return
    out = os.fspath(out)
    if command == "nni space" and out.endswith(".json"):
        return _check_file_output("--out", out, inputs)
    check_writable(out, "--out", folder=True)
    writes = WRITES.get(command, ())
    for option, path in inputs.items():
        rel = _inside(path, out)
        if rel is None:
            continue
        top = rel.split(os.sep)[0]
        if rel in writes or top + "/" in writes:
            raise UserError(f"{_flag(option)} {path}: lies in --out {out}, where `ganprune {command}` writes "
                            f"{top}; it would be overwritten: choose another --out or move the input")


def _check_file_output(flag: str, path: str, inputs: dict) -> None:
    check_writable(path, flag, folder=False)
    for option, source in inputs.items():
        if _same(path, source):
            raise UserError(f"{flag} {path}: is the input {_flag(option)}; writing it would replace that input: "
                            "choose another file name")
