"""The ``ganprune`` command line (also ``python -m ganprune``).

Each subcommand is a function registered with ``@command("name", help, options)``: ``options`` are
``ganprune.core.options.Option`` declarations (the same ones the pipeline and NNI code resolve), and the
function receives their resolved values as attributes. Names with a space (``"data make-demo"``)
become nested subcommands. Every subcommand takes ``--config FILE.yaml`` whose keys are its option
names; options given on the command line override the file. Every value, from either place, is checked
by ``ganprune.core.options.resolve`` before the command runs. So options are never ``required=True`` in
argparse: a command checks them with ``need(args, ...)``.

User mistakes raise ``UserError``: printed as one line, exit status 2, no traceback unless ``--debug``.
Nothing in the library imports this package; it sits on top of everything else.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from types import SimpleNamespace
from typing import Callable, Sequence

from ganprune.core.errors import UserError
from ganprune.core.options import ALLOW_ARCH, Option, read_config, resolve
from ganprune.core.paths import check_paths

COMMANDS: dict[str, tuple[str, tuple[Option, ...], Callable]] = {}
_MODULES = ("ganprune.cli.cmd_models", "ganprune.cli.cmd_search", "ganprune.cli.cmd_nni", "ganprune.cli.cmd_teacher")


def command(name: str, help: str, options: Sequence[Option] = ()):
    """Register ``run(args)`` as the subcommand ``name`` taking ``options`` (plus ``allow_arch``)."""
    def deco(run):
        COMMANDS[name] = (help, tuple(options) + ((ALLOW_ARCH,) if ALLOW_ARCH not in options else ()), run)
        return run
    return deco


def need(args, *names: str) -> None:
    """Options may come from the command line or from --config, so argparse cannot enforce them."""
    for name in names:
        if getattr(args, name, None) in (None, ""):
            raise UserError(f"missing --{name.replace('_', '-')} (give it on the command line or in --config)")


def pick(args, schema: Sequence[Option]) -> dict:
    """The values of ``schema``'s options in ``args`` (what a library entry point takes as keywords)."""
    return {o.name: getattr(args, o.name) for o in schema}


def option_help(o: Option) -> str:
    """``o``'s help, always saying its default (declarations that do not say it get it appended)."""
    text = o.help or o.name.replace("_", " ")
    if "default" in text or o.kind == "flag":
        return text + (" (default off)" if o.kind == "flag" and "default" not in text else "")
    shown = {True: "on", False: "off", None: "none"}.get(o.default, o.default) if not isinstance(o.default, (int, float)) \
        or isinstance(o.default, bool) else f"{o.default:g}"
    return f"{text} (default {shown})"


def _add_argument(p: argparse.ArgumentParser, o: Option) -> None:
    """``o`` as an argparse argument that keeps no default: only values given on the command line appear,
    as text; ``resolve`` converts and checks them like config values and fills in the defaults."""
    if o.positional:
        p.add_argument(o.name, nargs="?", default=argparse.SUPPRESS, help=o.help)
        return
    kw = dict(dest=o.name, default=argparse.SUPPRESS, help=option_help(o))
    flags = (o.flag, *o.alias_flags)
    if o.kind == "flag":
        p.add_argument(*flags, action="store_true", **kw)
    elif o.kind == "toggle":
        p.add_argument(*flags, action=argparse.BooleanOptionalAction, **kw)
    elif o.kind in ("strings", "pairs"):
        p.add_argument(*flags, action="append", metavar=o.metavar, **kw)
    else:
        metavar = o.metavar or ("{" + ",".join(map(str, o.choices)) + "}" if o.choices else None)
        p.add_argument(*flags, metavar=metavar, **kw)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The full parser, and each leaf subcommand's parser by name."""
    from ganprune import __version__
    for module in _MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(prog="ganprune", description="Prune Pix2Pix / CycleGAN generators and "
                                     "discriminators with collaborative agents and a local-density objective.")
    parser.add_argument("--version", action="version", version=f"ganprune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--threads", type=_threads, dest="_threads", default=None, metavar="N", help=THREADS_HELP)
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    leaves: dict[str, argparse.ArgumentParser] = {}
    for name, (help_text, schema, _) in sorted(COMMANDS.items()):
        words, subs = name.split(), top
        for depth in range(1, len(words)):
            key = " ".join(words[:depth])
            if key not in groups:
                group_parser = subs.add_parser(words[depth - 1], help=f"{key} subcommands")
                groups[key] = group_parser.add_subparsers(dest=f"command_{depth}", metavar="SUBCOMMAND")
                group_parser.set_defaults(_group_parser=group_parser)
            subs = groups[key]
        leaf = subs.add_parser(words[-1], help=help_text, description=help_text)
        for o in schema:
            _add_argument(leaf, o)
        leaf.add_argument("--config", help="YAML file of option values (command-line options override it)")
        leaf.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        if not any(o.name == "threads" for o in schema):   # export's own --threads sets the exported file's
            leaf.add_argument("--threads", type=_threads, dest="_threads", default=argparse.SUPPRESS, metavar="N",
                              help=THREADS_HELP)
        leaf.set_defaults(_leaf=name)
        leaves[name] = leaf
    return parser, leaves


def _negative_values(argv: Sequence[str], leaves) -> list[str]:
    """``--g-budget -1ms`` as ``--g-budget=-1ms``: argparse would take a value starting with '-' for an
    option and fail with a usage message; the value then gets the options layer's one-line check."""
    takes_value = {a for leaf in leaves.values() for action in leaf._actions if action.nargs is None
                   for a in action.option_strings}
    flags = {a for leaf in leaves.values() for action in leaf._actions for a in action.option_strings}
    out = []
    for token in argv:
        if out and out[-1] in takes_value and token.startswith("-") and token not in flags:
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


THREADS_HELP = ("CPU threads for torch (default: an exported OMP_NUM_THREADS, else one per physical core); "
                "idle threads always wait passively (OMP_WAIT_POLICY=PASSIVE unless exported)")


def _threads(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of threads >= 1, got {text!r}")
    return int(text)


def _own_keys(config: dict, schema) -> dict:
    """A config's keys for this command: one file serves every command of a pipeline (search, prune,
    finetune, nni ...), so keys that another ganprune command takes are left to it; keys that no command
    takes are still refused (by ``resolve``, naming the known ones)."""
    mine = {n for o in schema for n in (o.name, *o.aliases)}
    others = {n for _, s, _ in COMMANDS.values() for o in s for n in (o.name, *o.aliases)} - mine
    return {k: v for k, v in config.items() if str(k).replace("-", "_") not in others}


def parse(argv: Sequence[str]) -> tuple[SimpleNamespace | None, Callable | None]:
    """The resolved options of the subcommand in ``argv`` (config file under command line) and its run
    function; ``(None, None)`` when ``argv`` names no subcommand (help was printed)."""
    args, run, _, _ = _parse(argv)
    return args, run


def _parse(argv: Sequence[str]):
    """``parse``'s answer plus the subcommand's name and its ``--config`` file (None: none given)."""
    parser, leaves = build_parser()
    ns = parser.parse_args(_negative_values(argv, leaves))
    if not hasattr(ns, "_leaf"):
        (getattr(ns, "_group_parser", None) or parser).print_help()
        return None, None, None, None
    _, schema, run = COMMANDS[ns._leaf]
    values = resolve(schema, _own_keys(read_config(ns.config), schema), source=ns.config) if ns.config else \
        resolve(schema)
    given = {o.name: getattr(ns, o.name) for o in schema if hasattr(ns, o.name)}
    args = SimpleNamespace(**resolve(schema, given, source="cli", base=values))
    args._threads = ns._threads
    return args, run, ns._leaf, ns.config


def _allow_named_archs(args) -> None:
    """Class-path archs the user named (command line or their own config) may be imported; no others."""
    from ganprune.models.registry import allow_arch
    named = [getattr(args, k, None) for k in ("arch", "g_arch", "d_arch")]
    allow_arch(*[a for a in named + list(args.allow_arch or []) if isinstance(a, str)])


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args, run, name, config = _parse(argv)
        if run is None:
            return 0 if argv in ([], ["--debug"]) else 2
        from ganprune.core.threads import configure
        configure(args._threads)   # before any command imports torch: OpenMP reads its settings once
        _allow_named_archs(args)
        check_paths(name, {**vars(args), "config": config})   # no output over an input, every output writable
        return int(run(args) or 0)
    except UserError as exc:
        if debug:
            raise
        print(f"ganprune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ganprune: interrupted", file=sys.stderr)
        return 130
