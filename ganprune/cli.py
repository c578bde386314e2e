"""The ``ganprune`` command line.

Each subcommand is a function registered with ``@command("name", help)``; its docstring-free body
adds arguments to a parser and returns the function that runs it. Names with a space
(``"data make-demo"``) become nested subcommands. Every subcommand takes ``--config FILE.yaml``
whose keys are the subcommand's option names; options given on the command line override the file.
So options are never ``required=True`` in argparse: a command checks them with ``need(args, ...)``.

User mistakes raise ``UserError``: printed as one line, exit status 2, no traceback unless ``--debug``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

import yaml

from ganprune.errors import UserError

COMMANDS: dict[str, tuple[str, Callable]] = {}


def command(name: str, help: str):
    """Register ``fn(parser) -> run(args)`` as the subcommand ``name``."""
    def deco(fn):
        COMMANDS[name] = (help, fn)
        return fn
    return deco


# --------------------------------------------------------------------------- commands

@command("archs", "list the built-in generator and discriminator architectures with params and MACs")
def _archs(p):
    p.add_argument("--size", type=int, default=256, help="image size for MACs (default 256; a U-Net needs "
                   "at least 2**downsamplings, so unet_64 and unet_128 are counted at their own size if larger)")

    def run(args):
        import pandas as pd
        import torch
        import torch_pruning as tp

        from ganprune.models.registry import DISCRIMINATORS, GENERATORS, build
        rows = []
        for kind, table in (("generator", GENERATORS), ("discriminator", DISCRIMINATORS)):
            for name in table:
                net = build(name, kind)
                size = max(args.size, int(name[5:])) if name.startswith("unet_") else args.size
                x = torch.zeros(1, 6 if kind == "discriminator" else 3, size, size)
                macs, params = tp.utils.count_ops_and_params(net, x)
                rows.append({"arch": name, "kind": kind, "params": int(params), "size": size,
                             "GMACs": round(macs / 1e9, 3)})
        print(pd.DataFrame(rows).to_markdown(index=False))
    return run


# --------------------------------------------------------------------------- machinery

def need(args, *names: str) -> None:
    """Options may come from the command line or from --config, so argparse cannot enforce them."""
    for name in names:
        if getattr(args, name, None) in (None, ""):
            raise UserError(f"missing --{name.replace('_', '-')} (give it on the command line or in --config)")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The full parser, and each leaf subcommand's parser by name."""
    from ganprune import __version__
    parser = argparse.ArgumentParser(prog="ganprune", description="Prune Pix2Pix / CycleGAN generators and "
                                     "discriminators with collaborative agents and a local-density objective.")
    parser.add_argument("--version", action="version", version=f"ganprune {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    leaves: dict[str, argparse.ArgumentParser] = {}
    for name, (help_text, define) in sorted(COMMANDS.items()):
        words, subs = name.split(), top
        for depth in range(1, len(words)):
            key = " ".join(words[:depth])
            if key not in groups:
                group_parser = subs.add_parser(words[depth - 1], help=f"{key} subcommands")
                groups[key] = group_parser.add_subparsers(dest=f"command_{depth}", metavar="SUBCOMMAND")
                group_parser.set_defaults(_group_parser=group_parser)
            subs = groups[key]
        leaf = subs.add_parser(words[-1], help=help_text, description=help_text)
        leaf.add_argument("--config", help="YAML file of option values (command-line options override it)")
        leaf.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
        leaf.set_defaults(_run=define(leaf), _leaf=name)
        leaves[name] = leaf
    return parser, leaves


def _apply_config(leaf: argparse.ArgumentParser, path: str) -> None:
    """Use the YAML file's values as defaults of ``leaf``; unknown keys are an error."""
    try:
        with open(path, encoding="utf-8") as fh:
            values = yaml.safe_load(fh) or {}
    except OSError as exc:
        raise UserError(f"{path}: cannot read config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of option names to values at the top level")
    actions = {a.dest: a for a in leaf._actions if a.dest not in ("help", "config", "debug")}
    for key in values:
        if str(key).replace("-", "_") not in actions:
            raise UserError(f"{path}: unknown option {key!r}; known options: {', '.join(sorted(actions))}")
    leaf.set_defaults(**{str(k).replace("-", "_"): v for k, v in values.items()})


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser, leaves = build_parser()
    try:
        args = parser.parse_args(argv)
        if not hasattr(args, "_run"):
            (getattr(args, "_group_parser", None) or parser).print_help()
            return 0 if argv in ([], ["--debug"]) else 2
        if args.config:
            _apply_config(leaves[args._leaf], args.config)
            args = parser.parse_args(argv)
        return int(args._run(args) or 0)
    except UserError as exc:
        if debug:
            raise
        print(f"ganprune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ganprune: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
