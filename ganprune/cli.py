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
from ganprune.guard import DEFAULT_TIMEOUT
from ganprune.paths import check_paths

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


def add_pair_options(p):
    """Where the dense teacher pair comes from: a train-teacher folder, or two reference checkpoints."""
    p.add_argument("--teacher", help="folder written by `ganprune train-teacher` (holds both checkpoints and their options)")
    p.add_argument("--generator", help="reference-format generator checkpoint (latest_net_G.pth)")
    p.add_argument("--g-arch", default="unet_256", help="generator arch (default unet_256) or pkg.module:Class")
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--norm", default="batch", choices=["batch", "instance", "none"])
    p.add_argument("--dropout", action="store_true", help="the generator was built with dropout")
    p.add_argument("--discriminator", help="reference-format discriminator checkpoint (latest_net_D.pth)")
    p.add_argument("--d-arch", default="basic", help="discriminator arch (default basic)")
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--d-norm", default=None, help="discriminator norm (default: same as --norm)")
    p.add_argument("--n-layers-d", type=int, default=3)
    p.add_argument("--input-nc", type=int, default=3)
    p.add_argument("--output-nc", type=int, default=3)
    p.add_argument("--unconditional-d", action="store_true", help="D sees only images (CycleGAN), not cat(A, B)")


def pair_from_args(args):
    from ganprune.pipeline import load_pair
    g_spec = {"arch": args.g_arch, "ngf": args.ngf, "norm": args.norm, "input_nc": args.input_nc,
              "output_nc": args.output_nc, "dropout": bool(args.dropout)}
    d_in = args.output_nc if args.unconditional_d else args.input_nc + args.output_nc
    d_spec = {"arch": args.d_arch, "ndf": args.ndf, "norm": args.d_norm or args.norm, "input_nc": d_in,
              "n_layers": args.n_layers_d}
    return load_pair(args.teacher, args.generator, args.discriminator, g_spec, d_spec)


def add_search_options(p):
    """The pair, the data and the search: shared by ``search`` and ``prune`` (and their config files)."""
    add_pair_options(p)
    p.add_argument("--dataroot", help="dataset folder (reference aligned or unaligned layout)")
    p.add_argument("--mode", default="aligned", choices=["aligned", "unaligned"])
    p.add_argument("--direction", default="AtoB", choices=["AtoB", "BtoA"])
    p.add_argument("--size", type=int, default=None, help="image size (default: the images' own)")
    p.add_argument("--phase", default="train", help="search split (never val/test; default train)")
    p.add_argument("--calib-images", type=int, default=16, help="calibration images (default 16)")
    p.add_argument("--calib-batch", type=int, default=8)
    p.add_argument("--out", help="output folder: history.csv (resumable), widths.yaml, pareto.csv")
    p.add_argument("--g-budget", default="0.25", help="G budget: MACs as a fraction, percentage or absolute count, "
                   "or predicted latency like '12ms' (default 0.25)")
    p.add_argument("--d-budget", default="0.5", help="D budget, same spellings (default 0.5)")
    p.add_argument("--latency-table", help="a saved latency table (YAML) for a G budget in ms (default: time G once "
                   "and keep the table in --out)")
    p.add_argument("--latency-backend", default="torch+fold",
                   help="what a ms budget is timed on: torch[+fold][+cl] or onnxruntime (default torch+fold)")
    p.add_argument("--latency-threads", type=int, default=2, help="CPU threads a ms budget is timed with (default 2)")
    p.add_argument("--g-agent", default="greedy", help="agent for G (see `ganprune agents`)")
    p.add_argument("--d-agent", default="greedy", help="agent for D")
    p.add_argument("--agent-file", help="a .py file that registers extra agents")
    p.add_argument("--rounds", type=int, default=60, help="candidate pairs to evaluate (default 60)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--embedding", default="pixels", help="density feature space: pixels, teacher_d, inception")
    p.add_argument("--m", type=int, default=8, help="samples per local neighbourhood")
    p.add_argument("--discrepancy", default="mmd", choices=["mmd", "nll", "both"])
    p.add_argument("--l1-weight", type=float, default=0.0, help="weight of L1 to the teacher output in the G score")
    p.add_argument("--balance-weight", type=float, default=1.0, help="weight of the G/D balance in the G score")
    p.add_argument("--g-space", help="search-space YAML for G (default: search_spaces/<g-arch>.yaml)")
    p.add_argument("--d-space", help="search-space YAML for D")
    p.add_argument("--importance", default="l2", choices=["l1", "l2", "bn_scale"])
    p.add_argument("--on-agent-error", default="stop", choices=["stop", "skip"])
    p.add_argument("--agent-timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds one agent call (ask/"
                   f"tell) may take before the search stops with an error (default {DEFAULT_TIMEOUT:g}; 0: no limit)")
    p.add_argument("--fill", default=True, action=argparse.BooleanOptionalAction,
                   help="grow the winner into the budget it leaves unused (default on; --no-fill keeps it as found)")


@command("search", "collaborative G/D width search scored by the local-density objective (no fine-tuning)")
def _search(p):
    add_search_options(p)

    def run(args):
        import os

        from ganprune.pipeline import run_search, search_options
        need(args, "dataroot")
        G, D, g_spec, d_spec = pair_from_args(args)
        result = run_search(G, D, g_spec, d_spec, args.dataroot, args.out, **search_options(vars(args)))
        front = result.pareto()
        cols = ["round", "g_macs", "d_macs", "density", "balance", "score_g", "score", "feasible"]
        print(front[cols].to_markdown(index=False, floatfmt=".4g"))
        if args.out:
            from ganprune.io import atomic_write_text
            atomic_write_text(os.path.join(args.out, "pareto.csv"), front.to_csv(index=False))
        if result.best is None:
            raise UserError(f"no candidate pair met both budgets in {len(result.history)} rounds; "
                            "raise --rounds or loosen --g-budget/--d-budget")
        best = result.best
        print(f"best: round {best['round']} score {best['score']:.4g} G MACs {best['g_macs']:,} "
              f"D MACs {best['d_macs']:,}" + (f" -> {os.path.join(args.out, 'widths.yaml')}" if args.out else ""))
    return run


@command("agents", "list the pruning agents: built-in, installed plugins (entry points) and --agent-file")
def _agents(p):
    p.add_argument("--agent-file", help="also load agents registered by this Python file (see agents/template.py)")

    def run(args):
        import pandas as pd

        from ganprune.agent import available_agents
        rows = available_agents(agent_file=args.agent_file)
        print(pd.DataFrame(rows, columns=["name", "source", "description", "options"]).to_markdown(index=False))
    return run


@command("data make-demo", "build the offline paired demo dataset from photos shipped in scikit-image/-learn")
def _data_make_demo(p):
    p.add_argument("out", nargs="?", help="folder to build into (new, empty, or an earlier demo build)")
    p.add_argument("--size", type=int, default=128, help="tile size: 64, 128 or 256 (default 128)")
    p.add_argument("--task", default="edges2photo", help="edges2photo, blur2sharp or gray2color (default "
                   "edges2photo): how the input half A is made from the photo B")
    p.add_argument("--seed", type=int, default=0, help="chooses which whole photos form the val split (default 0)")

    def run(args):
        from ganprune.data.demo import make_demo
        if not args.out:
            raise UserError("missing OUT, the folder to build the demo set into (or 'out:' in --config)")
        s = make_demo(args.out, size=args.size, task=args.task, seed=args.seed)
        state = f"built in {s['seconds']:.1f} s" if s["built"] else "already built"
        print(f"{s['task']} {s['size']}x{s['size']}: {s['train']} train / {s['val']} val pairs "
              f"(val photos: {', '.join(s['val_sources'])}), {state} -> {s['out']}")
    return run


@command("export", "export a pruned model or a dense checkpoint to ONNX (BN folded, dynamic batch, checked)")
def _export(p):
    p.add_argument("--pruned", help="pruned model file written by ganprune (state dict + widths)")
    p.add_argument("--generator", help="dense reference-format generator checkpoint (latest_net_G.pth)")
    p.add_argument("--discriminator", help="dense reference-format discriminator checkpoint (latest_net_D.pth)")
    p.add_argument("--arch", help="arch of the dense checkpoint (default unet_256 for G, basic for D)")
    p.add_argument("--ngf", type=int, default=64, help="generator base width (default 64)")
    p.add_argument("--ndf", type=int, default=64, help="discriminator base width (default 64)")
    p.add_argument("--norm", default="batch", choices=["batch", "instance", "none"])
    p.add_argument("--dropout", action="store_true", help="the generator was built with dropout")
    p.add_argument("--n-layers-d", type=int, default=3, help="layers of the n_layers discriminator")
    p.add_argument("--input-nc", type=int, default=None, help="input channels of a dense checkpoint "
                   "(default 3 for G, 6 for a conditional D)")
    p.add_argument("--output-nc", type=int, default=3, help="generator output channels (default 3)")
    p.add_argument("--onnx", help="ONNX file to write")
    p.add_argument("--size", type=int, default=None, help="image size the graph is built for (default: the size "
                   "a pruned model was pruned at, else 256)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--no-fold-bn", action="store_true", help="keep BatchNorm layers instead of folding them")
    p.add_argument("--static-batch", action="store_true", help="fix the batch size at 1 instead of dynamic")

    def run(args):
        import torch

        from ganprune.export import export_onnx, input_channels
        need(args, "onnx")
        sources = [o for o in ("pruned", "generator", "discriminator") if getattr(args, o)]
        if len(sources) != 1:
            raise UserError("give exactly one of --pruned, --generator, --discriminator "
                            f"(got {', '.join('--' + s for s in sources) or 'none'})")
        if (args.size is not None and args.size < 1) or args.opset < 7:
            raise UserError(f"--size must be >= 1 and --opset >= 7 (got {args.size}, {args.opset})")
        size = args.size or 256
        if args.pruned:
            from ganprune.prune import load_pruned
            net = load_pruned(args.pruned)
            size = args.size or getattr(net, "ganprune_input_shape", [256])[-1]
        elif args.generator:
            from ganprune.models import load_generator
            net = load_generator(args.generator, arch=args.arch or "unet_256", ngf=args.ngf, norm=args.norm,
                                 input_nc=args.input_nc or 3, output_nc=args.output_nc, dropout=args.dropout)
        else:
            from ganprune.models import load_discriminator
            net = load_discriminator(args.discriminator, arch=args.arch or "basic", ndf=args.ndf, norm=args.norm,
                                     input_nc=args.input_nc or 6, n_layers=args.n_layers_d)
        x = torch.randn(1, input_channels(net), size, size, generator=torch.Generator().manual_seed(0))
        r = export_onnx(net, args.onnx, x, opset=args.opset, dynamic_batch=not args.static_batch,
                        fold_bn=not args.no_fold_bn)
        diff = "not checked (onnxruntime missing)" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2e}"
        batches = "1 and 2" if r["dynamic_batch"] else "1"
        print(f"exporter: {r['exporter']} (opset {r['opset']}), BatchNorm folded: {r['batchnorm_folded']}\n"
              f"onnx checker: ok\nmax |onnxruntime - torch| at batch {batches}: {diff}\n"
              f"size: {r['bytes'] / 2**20:.2f} MiB -> {r['path']} ({r['seconds']:.1f} s)")
    return run


@command("space", "show the prunable channel groups of an arch: full width, allowed widths, MACs/params share")
def _space(p):
    p.add_argument("--arch", help="built-in arch (unet_256, resnet_9blocks, basic, ...) or package.module:Class")
    p.add_argument("--kind", choices=["generator", "discriminator"], help="needed for package.module:Class "
                   "archs (built-in names are unique across kinds)")
    p.add_argument("--ngf", type=int, help="base width (ngf of G, ndf of D; default 64)")
    p.add_argument("--norm", choices=["batch", "instance", "none"], help="norm layers (default batch)")
    p.add_argument("--input-nc", type=int, help="input channels (default 3 for G, 6 for a conditional D)")
    p.add_argument("--size", type=int, default=256, help="image size for MACs (default 256; a U-Net needs "
                   "at least 2**downsamplings)")
    p.add_argument("--space", help="search-space YAML (default: search_spaces/<arch>.yaml)")
    p.add_argument("--csv", help="also write the table to this CSV file")

    def run(args):
        import torch

        from ganprune.io import atomic_write_text
        from ganprune.models.registry import build, kind_of
        from ganprune.space import SearchSpace
        need(args, "arch")
        if ":" in args.arch:
            need(args, "kind")
        kind = args.kind or kind_of(args.arch)
        options = {}
        if ":" not in args.arch:
            options = {k: v for k, v in (("ngf" if kind == "generator" else "ndf", args.ngf), ("norm", args.norm),
                                         ("input_nc", args.input_nc)) if v is not None}
        if args.size < 1 or (args.input_nc is not None and args.input_nc < 1):
            raise UserError(f"--size and --input-nc must be >= 1 (got {args.size}, {args.input_nc})")
        net = build(args.arch, kind, **options)
        channels = args.input_nc or (3 if kind == "generator" else 6)
        space = SearchSpace.from_model(net, torch.zeros(1, channels, args.size, args.size), arch=args.arch,
                                       config=args.space)
        table = space.table()
        print(table.to_markdown(index=False))
        full = space.full_widths()
        print(f"{args.arch} at {args.size}x{args.size}: {space.macs(full) / 1e9:.4g} GMACs, "
              f"{space.params(full) / 1e6:.4g} M params, {len(space.groups)} groups (choices: {space.source})")
        if args.csv:
            atomic_write_text(args.csv, table.to_csv(index=False))
    return run


@command("train-teacher", "train a Pix2Pix teacher (G + conditional PatchGAN D) on an aligned dataset, resumably")
def _train_teacher(p):
    p.add_argument("--dataroot", help="aligned dataset folder (train/ and val/ or test/ of A|B images)")
    p.add_argument("--out", help="output folder: latest_net_G/D.pth, teacher.yaml, train_state.pt, log.csv")
    p.add_argument("--arch", default="unet_128", help="generator arch (default unet_128; see `ganprune archs`)")
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--no-dropout", action="store_true", help="no dropout in G (pix2pix uses it)")
    p.add_argument("--netD", default="basic", help="discriminator arch: basic, n_layers, pixel (default basic)")
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--n-layers-d", type=int, default=3, help="layers of an n_layers D (default 3)")
    p.add_argument("--norm", default="batch", choices=["batch", "instance", "none"])
    p.add_argument("--direction", default="AtoB", choices=["AtoB", "BtoA"])
    p.add_argument("--load-size", type=int, default=None, help="resize images to this square (default: keep)")
    p.add_argument("--crop-size", type=int, default=None, help="random crop for training, resize for val")
    p.add_argument("--steps", type=int, default=20000, help="total training steps (default 20000)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--beta1", type=float, default=0.5)
    p.add_argument("--lambda-l1", type=float, default=100.0)
    p.add_argument("--gan-mode", default="vanilla", choices=["vanilla", "lsgan", "hinge"])
    p.add_argument("--decay-from", type=float, default=0.5,
                   help="fraction of steps after which the LR decays linearly to 0 (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--precision", default="auto", help="auto, fp32, bf16, fp16 (auto: bf16/fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--save-every", type=int, default=1000, help="steps between checkpoints (default 1000)")
    p.add_argument("--eval-every", type=int, default=2000, help="steps between val L1 checks (0: start and end)")
    p.add_argument("--log-every", type=int, default=10, help="steps per log.csv row (default 10)")
    p.add_argument("--val-items", type=int, default=None, help="use only the first N val images (default: all)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out holds a resumable run")

    def run(args):
        from ganprune.teacher import train_teacher
        need(args, "dataroot", "out")
        r = train_teacher(args.dataroot, args.out, arch=args.arch, ngf=args.ngf, netD=args.netD, ndf=args.ndf,
                          n_layers_D=args.n_layers_d, norm=args.norm, dropout=not args.no_dropout,
                          direction=args.direction, load_size=args.load_size, crop_size=args.crop_size,
                          batch_size=args.batch_size, steps=args.steps, lr=args.lr, beta1=args.beta1,
                          lambda_l1=args.lambda_l1, gan_mode=args.gan_mode, decay_from=args.decay_from,
                          seed=args.seed, device=args.device, precision=args.precision, save_every=args.save_every,
                          eval_every=args.eval_every, log_every=args.log_every, val_items=args.val_items,
                          resume=not args.no_resume,
                          num_workers=args.num_workers)
        print(_teacher_summary(r))
    return run


def _teacher_summary(r: dict) -> str:
    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"
    speed = (f"{r['steps_run']} steps this run at {r['steps_per_s']:.2f} steps/s ({r['s_per_step']:.3f} s/step)"
             if r["steps_run"] else "already trained, nothing to do")
    lines = [f"teacher {r['G']['arch']} ngf {r['G']['ngf']} on {r['device']} ({r['precision']}): {r['steps']} steps; "
             f"{speed}", f"val L1 {fmt(r['val_L1_start'])} -> {fmt(r['val_L1_end'])}"]
    lines += [f"  {name:5s} {path}" for name, path in r["paths"].items()]
    return "\n".join(lines)


@command("demo", "build the offline demo set (gray->color by default), train a small teacher on it (cached), "
                 "then prune it end to end: G to a quarter of its MACs, D to half, fine-tune, evaluate, export")
def _demo(p):
    p.add_argument("--out", help="folder for the demo set and teacher (default: $GANPRUNE_CACHE or the user "
                   "cache dir, under demo/)")
    p.add_argument("--quick", action="store_true", help="64x64, unet_64 ngf 8, 200 teacher steps, short search "
                   "and fine-tuning, no FID (1-2 minutes)")
    p.add_argument("--task", default="gray2color", help="demo task: gray2color (default), edges2photo or blur2sharp")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--precision", default="auto", help="auto, fp32, bf16, fp16")

    def run(args):
        import time

        import pandas as pd
        import torch

        from ganprune.metrics.complexity import macs_params
        from ganprune.teacher import demo_teacher, load_teacher
        t0 = time.perf_counter()
        r = demo_teacher(args.out, quick=args.quick, task=args.task, device=args.device, precision=args.precision)
        G, D, spec = load_teacher(r["out"])
        h, w = spec["data"]["size"]
        x = torch.zeros(1, spec["G"]["input_nc"], h, w)
        rows = []
        for name, net, inp in (("G", G, x), ("D", D, torch.zeros(1, spec["D"]["input_nc"], h, w))):
            macs, params = macs_params(net, inp)
            rows.append({"net": name, "arch": spec[name]["arch"], "width": spec[name].get("ngf", spec[name].get("ndf")),
                         "params": params, "GMACs": round(macs / 1e9, 4)})
        rows[0].update({"val L1 before": round(r["val_L1_start"], 4), "val L1 after": round(r["val_L1_end"], 4)})
        rows[1].update({"val L1 before": "", "val L1 after": ""})  # val L1 is a property of G alone
        table = pd.DataFrame(rows)
        d = r["dataset"]
        print(f"demo set: {d['task']} {h}x{w}, {d['train']} train / {d['val']} val pairs -> {r['dataroot']}")
        print(table.to_markdown(index=False, floatfmt=".4g"))
        print(f"teacher: {r['steps']} steps, training time {r['train_seconds']:.1f} s"
              + (" (cached: reused)" if not r["steps_run"] else f" ({r['s_per_step']:.3f} s/step)")
              + f", demo wall time {time.perf_counter() - t0:.1f} s")
        for name, path in r["paths"].items():
            print(f"  {name:5s} {path}")
        from ganprune.pipeline import demo_pipeline
        p = demo_pipeline(r, quick=args.quick)
        cols = [c for c in ("model", "GMACs", "D GMACs", "params (M)", "ms torch", "ms onnxruntime", "FID", "KID",
                            "PSNR", "PSNR vs teacher") if c in p["table"].columns]
        print(p["table"][cols].to_markdown(index=False, floatfmt=".4g"))
        print(f"pruning: {', '.join(f'{k} {v}' for k, v in p['stages'].items())} in {p['seconds']:.1f} s; "
              f"demo wall time {time.perf_counter() - t0:.1f} s")
        for name, path in p["paths"].items():
            print(f"  {name:12s} {path}")
    return run


@command("nni space", "write the NNI search space (one choice per prunable G and D group) for a search config")
def _nni_space(p):
    from ganprune.nni.space import add_nni_options
    add_nni_options(p)  # --out: a .json file, or a folder that receives search_space.json (default: print)

    def run(args):
        import json
        import os

        from ganprune.nni.space import export_search_space
        out = args.out
        if out and not out.endswith(".json"):
            out = os.path.join(out, "search_space.json")
        space = export_search_space(args, out)
        if out:
            print(f"{len(space)} choices ({sum(k.startswith('G/') for k in space)} G, "
                  f"{sum(k.startswith('D/') for k in space)} D groups) -> {out}")
        else:
            print(json.dumps(space, indent=2))
    return run


@command("nni trial", "one NNI trial: score NNI's next candidate and report it (what `nni run` starts)")
def _nni_trial(p):
    from ganprune.nni.space import add_nni_options
    add_nni_options(p)

    def run(args):
        from ganprune.nni.trial import run_trial
        r = run_trial(args)
        print(f"score {r['score']:.5g} (NNI default {r['default']:.5g}), feasible {r['feasible']}, "
              f"G MACs {r['g_macs']:,}, D MACs {r['d_macs']:,}, {r['trial_seconds']:.1f} s")
    return run


@command("nni run", "run the search as a real local NNI experiment (our agents or an NNI tuner), collect history")
def _nni_run(p):
    from ganprune.nni.experiment import TUNERS
    from ganprune.nni.space import add_nni_options
    add_nni_options(p)
    p.add_argument("--tuner", default="ours", choices=list(TUNERS),
                   help="ours (the --g-agent/--d-agent pair as an NNI tuner) or an NNI built-in tuner")
    p.add_argument("--trials", type=int, default=None, help="NNI trials (default: --rounds)")
    p.add_argument("--concurrency", type=int, default=1, help="trials at once (NNI tuners; ours runs one at a time)")
    p.add_argument("--port", type=int, default=8080, help="NNI web UI / REST port (default 8080)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the trials (default 3600)")

    def run(args):
        from ganprune.nni.experiment import run_experiment
        need(args, "out", "dataroot")
        r = run_experiment(args, args.out, tuner=args.tuner, trials=args.trials or args.rounds, port=args.port,
                           timeout=args.timeout, concurrency=args.concurrency)
        cols = ["round", "g_macs", "d_macs", "score_g", "score_d", "score", "feasible", "seconds", "error"]
        print(r.history[cols].to_markdown(index=False, floatfmt=".4g"))
        t = r.timings
        print(f"experiment {r.experiment_id} {r.status}: startup {t['startup_s']:.1f} s, trials {t['wait_s']:.1f} s"
              + (f" (median trial {t['trial_wall_s']:.1f} s)" if "trial_wall_s" in t else ""))
        if r.best is None:
            raise UserError(f"no trial met both budgets in {len(r.history)} trials; raise --trials or loosen "
                            "--g-budget/--d-budget")
        b = r.best
        print(f"best: trial {b['round']} score {b['score']:.4g} G MACs {int(b['g_macs']):,} "
              f"D MACs {int(b['d_macs']):,} -> {args.out}/widths.yaml")
    return run


@command("eval", "evaluate a generator on a split: MACs, params, PSNR/SSIM (vs GT and teacher), FID, KID")
def _eval(p):
    p.add_argument("--generator", help="dense reference-format generator checkpoint (latest_net_G.pth)")
    p.add_argument("--arch", default="unet_256", help="arch of --generator (default unet_256)")
    p.add_argument("--ngf", type=int, default=64, help="base width of --generator (default 64)")
    p.add_argument("--norm", default="batch", choices=["batch", "instance", "none"])
    p.add_argument("--dropout", action="store_true", help="--generator was built with dropout")
    p.add_argument("--input-nc", type=int, default=3, help="input channels of --generator (default 3)")
    p.add_argument("--output-nc", type=int, default=3, help="output channels of --generator (default 3)")
    p.add_argument("--pruned", help="pruned generator file written by ganprune")
    p.add_argument("--teacher", help="evaluate the generator of a `ganprune train-teacher` folder")
    p.add_argument("--teacher-for-reference", help="train-teacher folder: adds PSNR/SSIM vs its outputs and its own row")
    p.add_argument("--dataroot", help="dataset folder (reference aligned or unaligned layout)")
    p.add_argument("--phase", default="val", help="split to evaluate on (default val)")
    p.add_argument("--mode", default="aligned", choices=["aligned", "unaligned"])
    p.add_argument("--direction", default="AtoB", choices=["AtoB", "BtoA"])
    p.add_argument("--size", type=int, default=None, help="resize images to this square (default: their own size)")
    p.add_argument("--n", type=int, default=None, help="evaluate the first N images only (default: all)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-fid", action="store_true", help="skip FID and KID (the slow part: ~0.3 s per image on a CPU)")
    p.add_argument("--fid-weights", help="FID weights: a TorchScript feature network or pytorch-fid's "
                   "pt_inception-2015-12-05 state dict (default: the bundled FID Inception)")
    p.add_argument("--segmenter", help="TorchScript segmentation model ([N,3,H,W] in [0,1] -> logits): adds mIoU")
    p.add_argument("--num-classes", type=int, default=None, help="classes of --segmenter (default: from its logits)")
    p.add_argument("--latency", action="store_true", help="also time CPU inference (torch and onnxruntime, batch 1)")
    p.add_argument("--latency-repeats", type=int, default=20, help="timed calls per backend (default 20)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--out", help="folder for eval.csv and eval.md")

    def run(args):
        from ganprune.evaluation import evaluate, load_model, report_markdown, write_report
        need(args, "dataroot")
        for opt in ("n", "size", "batch_size", "num_classes", "latency_repeats"):
            value = getattr(args, opt)
            if value is not None and value < 1:
                raise UserError(f"--{opt.replace('_', '-')} must be >= 1 (got {value})")
        label, G = load_model(args.generator, args.pruned, args.teacher, arch=args.arch, ngf=args.ngf,
                              norm=args.norm, dropout=args.dropout, input_nc=args.input_nc, output_nc=args.output_nc)
        teacher = None
        if args.teacher_for_reference:
            from ganprune.teacher import load_teacher
            teacher = load_teacher(args.teacher_for_reference)[0]
        table, computed_on = evaluate({label: G}, args.dataroot, phase=args.phase, mode=args.mode,
                                      direction=args.direction, size=args.size, n=args.n, fid=not args.no_fid,
                                      kid=not args.no_fid, fid_weights=args.fid_weights, teacher=teacher,
                                      latency=args.latency, latency_repeats=args.latency_repeats,
                                      segmenter=args.segmenter, num_classes=args.num_classes,
                                      batch_size=args.batch_size, device=args.device)
        print(report_markdown(table, computed_on), end="")
        if args.out:
            paths = write_report(table, computed_on, args.out)
            print(f"-> {paths['csv']}, {paths['md']}")
    return run


@command("finetune", "fine-tune a pruned G/D pair with a recipe (density, pix2pix, cyclegan, dgl, dcd, gcc, selfsup)")
def _finetune(p):
    p.add_argument("--pruned-g", help="pruned generator file (written by `ganprune prune`/save_pruned)")
    p.add_argument("--pruned-d", help="pruned discriminator file (default: a trainable copy of the teacher's D)")
    add_pair_options(p)
    p.add_argument("--dataroot", help="dataset folder (aligned: train/ val/; unaligned: trainA trainB testA testB)")
    p.add_argument("--dataset-mode", default="aligned", choices=["aligned", "unaligned"])
    p.add_argument("--direction", default="AtoB", choices=["AtoB", "BtoA"])
    p.add_argument("--load-size", type=int, default=None, help="resize images to this square (default: keep)")
    p.add_argument("--crop-size", type=int, default=None, help="random crop for training, resize for val")
    p.add_argument("--recipe", default="density", help="fine-tuning recipe (default density)")
    p.add_argument("--recipe-option", action="append", metavar="KEY=VALUE",
                   help="recipe option, repeatable (values are YAML: 0.3, true, [noise, jitter]); "
                        "in --config a mapping recipe_option: {key: value}")
    p.add_argument("--out", help="output folder: G.pt, D.pt (pruned format), state.pt, log.csv")
    p.add_argument("--steps", type=int, default=10000, help="total training steps (default 10000)")
    p.add_argument("--batch-size", type=int, default=1, help="per process (default 1)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--beta1", type=float, default=0.5)
    p.add_argument("--decay-from", type=float, default=0.5,
                   help="fraction of steps after which the LR decays linearly to 0 (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--precision", default="auto", help="auto, fp32, bf16, fp16 (auto: bf16/fp16 on CUDA, fp32 on CPU)")
    p.add_argument("--save-every", type=int, default=500, help="steps between checkpoints (default 500)")
    p.add_argument("--eval-every", type=int, default=1000, help="steps between val L1 checks (0: start and end)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out holds a resumable run")

    def run(args):
        import copy
        import os

        from ganprune.data import build_dataset
        from ganprune.finetune import finetune
        from ganprune.prune import load_pruned
        need(args, "pruned_g", "dataroot", "out")
        options = args.recipe_option or {}
        if isinstance(options, list):
            parsed = {}
            for item in options:
                key, sep, value = str(item).partition("=")
                if not sep or not key.strip():
                    raise UserError(f"--recipe-option {item!r}: expected KEY=VALUE")
                try:
                    parsed[key.strip()] = yaml.safe_load(value)
                except yaml.YAMLError:
                    raise UserError(f"--recipe-option {item!r}: value is not valid YAML") from None
            options = parsed
        elif not isinstance(options, dict):
            raise UserError("recipe_option: expected a mapping of option names to values in --config")
        TG, TD, _, d_spec = pair_from_args(args)
        G = load_pruned(args.pruned_g)
        D = load_pruned(args.pruned_d) if args.pruned_d else copy.deepcopy(TD)
        data = {"direction": args.direction, "load_size": args.load_size, "crop_size": args.crop_size}
        train = build_dataset(args.dataroot, args.dataset_mode, "train", **data)
        suffix = "A" if args.dataset_mode == "unaligned" else ""
        phase = next((ph for ph in ("val", "test") if os.path.isdir(os.path.join(args.dataroot, ph + suffix))), None)
        val = build_dataset(args.dataroot, args.dataset_mode, phase, flip=False, **data) if phase else None
        r = finetune(G, D, TG, TD, train, recipe=args.recipe, steps=args.steps, out=args.out,
                     batch_size=args.batch_size, lr=args.lr, beta1=args.beta1, decay_from=args.decay_from,
                     seed=args.seed, device=args.device, precision=args.precision, save_every=args.save_every,
                     eval_every=args.eval_every, eval_dataset=val, resume=not args.no_resume,
                     recipe_options=options, d_spec=None if args.pruned_d else d_spec, num_workers=args.num_workers)
        rate = f"{r['steps_per_s']:.2f} steps/s" if r["steps_per_s"] else "nothing to do"
        val_text = ", ".join(f"{k} {r[k]:.4f}" for k in ("val_L1", "val_L1_teacher") if r[k] is not None)
        print(f"finetune {r['recipe']}: step {r['steps']} ({r['steps_run']} run, {rate}, {r['device']} "
              f"{r['precision']}, {r['world_size']} process(es)){'; ' + val_text if val_text else ''}")
        for name, path in r["paths"].items():
            print(f"  {name}: {path}")
    return run


@command("prune", "the whole pipeline: search -> prune -> fine-tune -> evaluate -> export -> report (resumable)")
def _prune(p):
    from ganprune.pipeline import STAGES
    add_search_options(p)
    p.add_argument("--recipe", default="density", help="fine-tuning recipe (default density; see `ganprune finetune`)")
    p.add_argument("--finetune-steps", type=int, default=1000, help="fine-tuning steps (default 1000)")
    p.add_argument("--batch-size", type=int, default=1, help="fine-tuning batch size (default 1)")
    p.add_argument("--save-every", type=int, default=500, help="fine-tuning steps between resumable checkpoints "
                   "(default 500; a killed fine-tune resumes from the last one, bit-identically)")
    p.add_argument("--fid", action=argparse.BooleanOptionalAction, default=True,
                   help="FID/KID in the evaluation (default on; ~0.3 s per image per model on a CPU)")
    p.add_argument("--eval-images", type=int, default=None, help="evaluate on the first N val images (default all)")
    p.add_argument("--latency", action=argparse.BooleanOptionalAction, default=True,
                   help="CPU latency, torch and onnxruntime, batch 1 (default on)")
    p.add_argument("--stage", choices=STAGES, help="run only this stage (its inputs must exist), finished or not")

    def run(args):
        from ganprune.pipeline import resolve_config, run_pipeline
        need(args, "dataroot", "out")
        config = {k: v for k, v in vars(args).items() if k in resolve_config({})}
        r = run_pipeline(config, args.out, stages=[args.stage] if args.stage else None)
        if r["table"] is not None:
            print(r["table"].to_markdown(index=False, floatfmt=".4g"))
        print(", ".join(f"{name} {state}" for name, state in r["stages"].items()) + f" in {r['seconds']:.1f} s")
        for name, path in r["paths"].items():
            print(f"  {name:12s} {path}")
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
        leaf.add_argument("--allow-arch", action="append", metavar="PKG.MODULE:CLASS", help="allow this network "
                          "class to be imported when a file (pruned model, teacher.yaml) names it; archs you give "
                          "with --arch/--g-arch/--d-arch are allowed already (repeatable)")
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


def _allow_named_archs(args) -> None:
    """Class-path archs the user named (command line or their own config) may be imported; no others."""
    from ganprune.models.registry import allow_arch
    named = [getattr(args, k, None) for k in ("arch", "g_arch", "d_arch")]
    extra = getattr(args, "allow_arch", None) or []
    if isinstance(extra, str):
        extra = [extra]
    if not isinstance(extra, list) or not all(isinstance(a, str) for a in extra):
        raise UserError(f"allow_arch: expected a list of 'package.module:ClassName' strings, got {extra!r}")
    allow_arch(*[a for a in named + extra if isinstance(a, str)])


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
        _allow_named_archs(args)
        check_paths(args._leaf, vars(args))
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
