"""Prune a Pix2Pix pair from reference-format checkpoints with the Python API: search → prune → ONNX.

    python examples/prune_pix2pix_checkpoint.py --generator checkpoints/facades/latest_net_G.pth \
        --discriminator checkpoints/facades/latest_net_D.pth --dataroot datasets/facades --out runs/facades
    python examples/prune_pix2pix_checkpoint.py --selftest     # tiny fresh checkpoints + 64x64 demo data

The checkpoints are the state dicts pytorch-CycleGAN-and-pix2pix writes (``--g-arch``/``--ngf``/... must
match how they were trained). The search runs on the train split; fine-tuning and evaluation are left to
``ganprune prune`` (the whole pipeline) — this script shows the pieces.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import torch

from ganprune.deploy.export import export_onnx
from ganprune.metrics.complexity import macs_params
from ganprune.train.pair import load_pair
from ganprune.search.setup import run_search
from ganprune.pruning.physical import pruned_info, save_pruned


def selftest_inputs(root: str) -> tuple[str, str, str]:
    """Fresh-init unet_64 (ngf 8) / basic (ndf 8) checkpoints and the 64x64 demo set under ``root``."""
    from ganprune.data.demo import make_demo
    from ganprune.models.checkpoint import load_discriminator, load_generator, save_checkpoint
    torch.manual_seed(0)
    g_path, d_path = os.path.join(root, "latest_net_G.pth"), os.path.join(root, "latest_net_D.pth")
    save_checkpoint(g_path, load_generator(arch="unet_64", ngf=8))
    save_checkpoint(d_path, load_discriminator(ndf=8))
    data = make_demo(os.path.join(root, "data"), size=64, task="gray2color")
    return g_path, d_path, data["out"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--generator", help="latest_net_G.pth")
    p.add_argument("--discriminator", help="latest_net_D.pth")
    p.add_argument("--dataroot", help="aligned dataset folder (train/ is searched on)")
    p.add_argument("--out", help="output folder (default: a temporary one with --selftest)")
    p.add_argument("--g-arch", default="unet_256")
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--d-arch", default="basic")
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--g-budget", default="0.25", help="G MACs budget (fraction of the dense G)")
    p.add_argument("--d-budget", default="0.5")
    p.add_argument("--rounds", type=int, default=60, help="candidate pairs to evaluate")
    p.add_argument("--supernet-steps", type=int, default=300, help="supernet training steps before the search "
                   "(0: score weights inherited from the teacher)")
    p.add_argument("--selftest", action="store_true", help="make tiny checkpoints and demo data, few rounds")
    args = p.parse_args(argv)

    tmp = None
    if args.selftest:
        tmp = tempfile.TemporaryDirectory(prefix="ganprune-example-")
        args.out = args.out or tmp.name
        args.generator, args.discriminator, args.dataroot = selftest_inputs(args.out)
        args.g_arch, args.ngf, args.ndf, args.rounds = "unet_64", 8, 8, min(args.rounds, 24)
        args.supernet_steps = min(args.supernet_steps, 10)
    if not (args.generator and args.discriminator and args.dataroot and args.out):
        p.error("give --generator, --discriminator, --dataroot and --out (or --selftest)")

    G, D, g_spec, d_spec = load_pair(generator=args.generator, discriminator=args.discriminator,
                                     g_spec={"arch": args.g_arch, "ngf": args.ngf}, d_spec={"arch": args.d_arch, "ndf": args.ndf})
    result = run_search(G, D, g_spec, d_spec, args.dataroot, os.path.join(args.out, "search"),
                        g_budget=args.g_budget, d_budget=args.d_budget, rounds=args.rounds, calib_images=8,
                        supernet_steps=args.supernet_steps, progress=False)
    if result.best is None:
        raise SystemExit(f"no pair within both budgets after {args.rounds} rounds; raise --rounds")
    best = result.best
    # As scored: the winner's supernet slice (or the teacher's channels), BatchNorm re-estimated.
    g, d = result.evaluator.build_pair(best["g_widths"], best["d_widths"])
    save_pruned(os.path.join(args.out, "pruned_G.pt"), g.cpu(), g_spec, pruned_info(g).widths)
    save_pruned(os.path.join(args.out, "pruned_D.pt"), d.cpu(), d_spec, pruned_info(d).widths)
    x = torch.zeros(pruned_info(g).input_shape)
    onnx = export_onnx(g, os.path.join(args.out, "pruned_G.onnx"), x)

    for name, dense, small, inp in (("G", G, g, x), ("D", D, d, torch.zeros(pruned_info(d).input_shape))):
        before, after = macs_params(dense, inp)[0], macs_params(small, inp)[0]
        print(f"{name} MACs: {before:,} -> {after:,} ({100 * after / before:.1f}%)")
    print(f"search: {len(result.history)} rounds, winner round {best['round']} score {best['score']:.4g}")
    print(f"ONNX: {onnx['path']} ({onnx['bytes']:,} bytes, max |onnxruntime - torch| {onnx['max_abs_diff']:.2g})")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
