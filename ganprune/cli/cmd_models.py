"""Commands about single networks: ``archs``, ``space``, ``export``, ``eval``."""
from __future__ import annotations

from dataclasses import replace

from ganprune.cli import command, need, pick
from ganprune.core.errors import UserError
from ganprune.core.options import (DEVICE, DIRECTION, INPUT_NC, MAX_OPSET, MODE, N_LAYERS_D, NDF, NGF, NORM,
                                   OUTPUT_NC, Option)

KINDS = ("generator", "discriminator")


@command("archs", "list the built-in generator and discriminator architectures with params and MACs", [
    Option("size", 256, "int", min=1, help="image size for MACs (default 256; a U-Net needs at least "
           "2**downsamplings, so unet_64 and unet_128 are counted at their own size if larger)"),
])
def _archs(args):
    import pandas as pd

    from ganprune.metrics.complexity import MACS_NOTE, complexity
    from ganprune.models.registry import DISCRIMINATORS, GENERATORS, build
    rows = []
    for kind, table in (("generator", GENERATORS), ("discriminator", DISCRIMINATORS)):
        for name in table:
            net = build(name, kind)
            size = max(args.size, int(name[5:])) if name.startswith("unet_") else args.size
            c = complexity(net, (1, 6 if kind == "discriminator" else 3, size, size))
            rows.append({"arch": name, "kind": kind, "params": c["params"], "size": size,
                         "GMACs": round(c["GMACs"], 3), "real GMACs": round(c["real_GMACs"], 3)})
    print(pd.DataFrame(rows).to_markdown(index=False))
    print(MACS_NOTE)


@command("space", "show the prunable channel groups of an arch: full width, allowed widths, MACs/params share", [
    Option("arch", help="built-in arch (unet_256, resnet_9blocks, basic, ...) or package.module:Class"),
    Option("kind", choices=KINDS, help="needed for package.module:Class archs (built-in names are unique "
           "across kinds)"),
    replace(NGF, help="base width (ngf of G, ndf of D)"),
    NORM,
    Option("input_nc", None, "int", min=1, help="input channels (default 3 for G, 6 for a conditional D)"),
    Option("size", 256, "int", min=1, help="image size for MACs (default 256; a U-Net needs at least "
           "2**downsamplings)"),
    Option("space", kind="path", help="search-space YAML (default: search_spaces/<arch>.yaml)"),
    Option("csv", kind="path", help="also write the table to this CSV file"),
])
def _space(args):
    import torch

    from ganprune.core.io import atomic_write_text
    from ganprune.models.registry import build, kind_of
    from ganprune.pruning.space import SearchSpace
    need(args, "arch")
    if ":" in args.arch:
        need(args, "kind")
    kind = args.kind or kind_of(args.arch)
    options = {}
    if ":" not in args.arch:
        options = {"ngf" if kind == "generator" else "ndf": args.ngf, "norm": args.norm,
                   **({"input_nc": args.input_nc} if args.input_nc else {})}
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


@command("export", "export a pruned model or a dense checkpoint to ONNX, OpenVINO or ExecuTorch (BN folded, checked)", [
    Option("pruned", kind="path", help="pruned model file written by ganprune (state dict + widths)"),
    Option("generator", kind="path", help="dense reference-format generator checkpoint (latest_net_G.pth)"),
    Option("discriminator", kind="path", help="dense reference-format discriminator checkpoint (latest_net_D.pth)"),
    Option("arch", help="arch of the dense checkpoint (default unet_256 for G, basic for D)"),
    NGF,
    NDF,
    NORM,
    Option("dropout", False, "flag", help="the generator was built with dropout"),
    N_LAYERS_D,
    Option("input_nc", None, "int", min=1, help="input channels of a dense checkpoint (default 3 for G, 6 for a "
           "conditional D)"),
    OUTPUT_NC,
    Option("onnx", kind="path", help="ONNX file to write (same as --out with --format onnx)"),
    Option("out", kind="path", help="file to write: .onnx, OpenVINO .xml (+ .bin), or ExecuTorch .pte"),
    Option("format", None, choices=("onnx", "openvino", "pte"), help="runtime format (default: from the file's "
           "extension, else onnx); openvino and pte need pip install 'ganprune[openvino]' / 'ganprune[executorch]'"),
    Option("threads", "auto", help="CPU threads the file is meant to run with, recorded in its metadata: a number, "
           "or 'auto' to time 1, 2, 4... and keep the fastest (default auto)"),
    Option("fixed_size", False, "flag", help="fix H and W at --size (default: dynamic where the net runs at "
           "other sizes)"),
    Option("size", None, "int", min=1, help="image size the graph is built for (default: the size a pruned "
           "model was pruned at, else 256)"),
    Option("opset", 17, "int", min=7, max=MAX_OPSET, help="ONNX opset (default 17)"),
    Option("no_fold_bn", False, "flag", help="keep BatchNorm layers instead of folding them"),
    Option("static_batch", False, "flag", help="fix the batch size at 1 instead of dynamic"),
])
def _export(args):
    import os

    from ganprune.deploy.export import export_model, image_like, input_channels
    from ganprune.deploy.runtimes import FORMATS, format_of
    if bool(args.onnx) == bool(args.out):
        raise UserError("give the file to write as --out (or --onnx for ONNX), once")
    out = args.out or args.onnx
    fmt = args.format or (format_of(out) if os.path.splitext(out)[1] else "onnx")
    if args.onnx and fmt != "onnx" or os.path.splitext(out)[1] not in ("", FORMATS[fmt]):
        raise UserError(f"{out}: a {fmt} file must end in {FORMATS[fmt]}")
    if args.threads != "auto" and not (str(args.threads).isdigit() and int(args.threads) >= 1):
        raise UserError(f"--threads {args.threads!r}: expected a number >= 1 or 'auto'")
    sources = [o for o in ("pruned", "generator", "discriminator") if getattr(args, o)]
    if len(sources) != 1:
        raise UserError("give exactly one of --pruned, --generator, --discriminator "
                        f"(got {', '.join('--' + s for s in sources) or 'none'})")
    size = args.size or 256
    if args.pruned:
        from ganprune.pruning.physical import load_pruned, pruned_info
        net = load_pruned(args.pruned)
        size = args.size or pruned_info(net).input_shape[-1]
    elif args.generator:
        from ganprune.models.checkpoint import load_generator
        net = load_generator(args.generator, arch=args.arch or "unet_256", ngf=args.ngf, norm=args.norm,
                             input_nc=args.input_nc or 3, output_nc=args.output_nc, dropout=args.dropout)
    else:
        from ganprune.models.checkpoint import load_discriminator
        net = load_discriminator(args.discriminator, arch=args.arch or "basic", ndf=args.ndf, norm=args.norm,
                                 input_nc=args.input_nc or 6, n_layers=args.n_layers_d)
    x = image_like((1, input_channels(net), size, size))   # parity on an image-like input, not noise or zeros
    r = export_model(net, out, x, fmt=fmt, opset=args.opset, dynamic_batch=not args.static_batch,
                     fold_bn=not args.no_fold_bn, dynamic_hw=False if args.fixed_size else None,
                     threads=args.threads if args.threads == "auto" else int(args.threads),
                     metadata={"source": os.path.abspath(getattr(args, sources[0]))})
    batches = "1 and 2" if r["dynamic_batch"] and fmt != "pte" else "1"
    sizes = " and ".join(f"{h}x{w}" for h, w in r["checked_sizes"][:1 if fmt == "pte" else None])
    timing = ", ".join(f"{t}: {ms:.2f} ms" for t, ms in (r["latency_ms_by_threads"] or {}).items())
    print(f"format: {fmt}; exporter: {r['exporter']} (opset {r['opset']}), BatchNorm folded: "
          f"{r['batchnorm_folded']}\n" + ("" if fmt == "pte" else "onnx checker: ok\n") +
          f"input: {r['metadata']['input_shape']}\n"
          f"max |{fmt} runtime - torch| at batch {batches}, {sizes} ({r['parity_input']}): "
          f"{r['max_abs_diff']:.2e}\nthreads: {r['threads']}" + (f" (timed {timing})" if timing else "") +
          f"\nsize: {r['bytes'] / 2**20:.2f} MiB -> {r['path']} ({r['seconds']:.1f} s)")


EVAL_MODEL = (
    Option("generator", kind="path", help="dense reference-format generator checkpoint (latest_net_G.pth)"),
    Option("arch", "unet_256", help="arch of --generator (default unet_256)"),
    NGF,
    NORM,
    Option("dropout", False, "flag", help="--generator was built with dropout"),
    INPUT_NC,
    OUTPUT_NC,
    Option("pruned", kind="path", help="pruned generator file written by ganprune"),
    Option("teacher", kind="path", help="evaluate the generator of a `ganprune train-teacher` folder"),
)
"""``ganprune eval``'s model: ``ganprune.evaluation.load_model``'s keywords, by name."""

EVAL_DATA = (
    Option("dataroot", kind="path", help="dataset folder (reference aligned or unaligned layout)"),
    Option("phase", "val", help="split to evaluate on (default val)"),
    MODE,
    DIRECTION,
    Option("size", None, "int", min=1, help="resize images to this square (default: their own size)"),
    Option("n", None, "int", min=1, help="evaluate the first N images only (default: all)"),
    Option("batch_size", 8, "int", min=1),
    Option("fid", True, "toggle", help="FID and KID (default on; --no-fid skips them, the slow part on a CPU)"),
    Option("fid_weights", kind="path", help="FID weights: a TorchScript feature network or pytorch-fid's "
           "pt_inception-2015-12-05 state dict (default: the bundled FID Inception)"),
    Option("segmenter", kind="path", help="TorchScript segmentation model ([N,3,H,W] in [0,1] -> logits): adds mIoU"),
    Option("num_classes", None, "int", min=1, help="classes of --segmenter (default: from its logits)"),
    Option("latency", False, "flag", help="also time CPU inference (torch and onnxruntime, batch 1)"),
    Option("latency_repeats", 20, "int", min=1, help="timed calls per backend (default 20)"),
    DEVICE,
)
"""``ganprune eval``'s data and measurements: ``ganprune.evaluation.evaluate``'s keywords, by name (KID goes
with FID)."""


@command("eval", "evaluate a generator on a split: MACs, params, PSNR/SSIM (vs GT and teacher), FID, KID",
         EVAL_MODEL + (
             Option("teacher_for_reference", kind="path", help="train-teacher folder: adds PSNR/SSIM vs its outputs "
                    "and its own row"),
         ) + EVAL_DATA + (
             Option("out", kind="path", help="folder for eval.csv, eval.md and grid.png (input and outputs of a few images)"),
         ))
def _eval(args):
    from ganprune.evaluation import evaluate, load_model, report_markdown, write_report
    need(args, "dataroot")
    label, G = load_model(**pick(args, EVAL_MODEL))
    teacher = None
    if args.teacher_for_reference:
        from ganprune.train.teacher import load_teacher
        teacher = load_teacher(args.teacher_for_reference)[0]
    table, computed_on = evaluate({label: G}, **pick(args, EVAL_DATA), kid=args.fid, teacher=teacher)
    print(report_markdown(table, computed_on), end="")
    if args.out:
        import os

        from ganprune.report import image_grid
        paths = write_report(table, computed_on, args.out)
        grid = image_grid({**({"teacher": teacher} if teacher is not None else {}), label: G}, args.dataroot,
                          os.path.join(args.out, "grid.png"), phase=args.phase, mode=args.mode,
                          direction=args.direction, size=args.size)
        print(f"-> {paths['csv']}, {paths['md']}, {grid['path']} (input, "
              f"{', '.join(grid['columns'][1:])}; {grid['rows']} images)")
