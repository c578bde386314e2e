"""Commands that make things to prune: ``data make-demo``, ``train-teacher``, ``demo``; and ``agents``."""
from __future__ import annotations

from ganprune.cli import command, need, pick
from ganprune.core.errors import UserError
from ganprune.core.options import DEVICE, PRECISION, TEACHER, Option


@command("agents", "list the pruning agents: built-in, installed plugins (entry points) and --agent-file", [
    Option("agent_file", kind="path", help="also load agents registered by this Python file (see agents/template.py)"),
])
def _agents(args):
    import pandas as pd

    from ganprune.search.agent import available_agents
    rows = available_agents(agent_file=args.agent_file)
    print(pd.DataFrame(rows, columns=["name", "source", "description", "options"]).to_markdown(index=False))


MAKE_DEMO = (
    Option("out", kind="path", positional=True, help="folder to build into (new, empty, or an earlier demo build)"),
    Option("size", 128, "int", min=1, help="tile size: 64, 128 or 256 (default 128)"),
    Option("task", "edges2photo", help="edges2photo, blur2sharp or gray2color (default edges2photo): how the "
           "input half A is made from the photo B"),
    Option("seed", 0, "int", min=0, help="chooses which whole photos form the val split (default 0)"),
    Option("layout", "aligned", choices=("aligned", "unaligned"), help="aligned: pix2pix pairs in train/ val/; "
           "unaligned: CycleGAN folders trainA trainB testA testB (default aligned)"),
)
"""``ganprune data make-demo``: ``ganprune.data.demo.make_demo``'s keywords, by name."""


@command("data make-demo", "build the offline paired demo dataset from photos shipped in scikit-image/-learn",
         MAKE_DEMO)
def _data_make_demo(args):
    from ganprune.data.demo import make_demo
    if not args.out:
        raise UserError("missing OUT, the folder to build the demo set into (or 'out:' in --config)")
    s = make_demo(**pick(args, MAKE_DEMO))
    state = f"built in {s['seconds']:.1f} s" if s["built"] else "already built"
    layout = " unaligned (trainA trainB testA testB)" if s["layout"] == "unaligned" else ""
    print(f"{s['task']} {s['size']}x{s['size']}{layout}: {s['train']} train / {s['val']} val pairs "
          f"(val photos: {', '.join(s['val_sources'])}), {state} -> {s['out']}")


@command("train-teacher", "train a Pix2Pix teacher (G + conditional PatchGAN D) on an aligned dataset, resumably",
         TEACHER)
def _train_teacher(args):
    from ganprune.train.teacher import train_teacher
    need(args, "dataroot", "out")
    print(_teacher_summary(train_teacher(**pick(args, TEACHER))))


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
                 "then prune it end to end: G to a quarter of its MACs, D to half, fine-tune, evaluate, export", [
    Option("out", kind="path", help="folder for the demo set and teacher (default: $GANPRUNE_CACHE or the user "
           "cache dir, under demo/)"),
    Option("quick", False, "flag", help="64x64, unet_64 ngf 8, 200 teacher steps, short search and fine-tuning, "
           "no FID (run times: docs/benchmarks.md)"),
    Option("task", "gray2color", help="demo task: gray2color (default), edges2photo or blur2sharp"),
    DEVICE,
    PRECISION,
])
def _demo(args):
    import time

    import pandas as pd
    import torch

    from ganprune.demo import demo_pipeline
    from ganprune.metrics.complexity import MACS_NOTE, macs_params
    from ganprune.train.teacher import demo_teacher, load_teacher
    t0 = time.perf_counter()
    r = demo_teacher(args.out, quick=args.quick, task=args.task, device=args.device, precision=args.precision)
    G, D, spec = load_teacher(r["out"])
    h, w = spec["data"]["size"]
    rows = []
    for name, net in (("G", G), ("D", D)):
        macs, params = macs_params(net, torch.zeros(1, spec[name]["input_nc"], h, w))
        rows.append({"net": name, "arch": spec[name]["arch"], "width": spec[name].get("ngf", spec[name].get("ndf")),
                     "params": params, "GMACs": round(macs / 1e9, 4)})
    rows[0].update({"val L1 before": round(r["val_L1_start"], 4), "val L1 after": round(r["val_L1_end"], 4)})
    rows[1].update({"val L1 before": "", "val L1 after": ""})  # val L1 is a property of G alone
    d = r["dataset"]
    print(f"demo set: {d['task']} {h}x{w}, {d['train']} train / {d['val']} val pairs -> {r['dataroot']}")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4g"))
    print(f"teacher: {r['steps']} steps, training time {r['train_seconds']:.1f} s"
          + (" (cached: reused)" if not r["steps_run"] else f" ({r['s_per_step']:.3f} s/step)")
          + f", demo wall time {time.perf_counter() - t0:.1f} s")
    for name, path in r["paths"].items():
        print(f"  {name:5s} {path}")
    p = demo_pipeline(r, quick=args.quick)
    cols = [c for c in ("model", "GMACs", "real GMACs", "D GMACs", "params (M)", "ms torch", "ms onnxruntime", "FID",
                        "KID", "PSNR", "PSNR vs teacher") if c in p["table"].columns]
    print(p["table"][cols].to_markdown(index=False, floatfmt=".4g"))
    print(MACS_NOTE)
    print(f"pruning: {', '.join(f'{k} {v}' for k, v in p['stages'].items())} in {p['seconds']:.1f} s; "
          f"demo wall time {time.perf_counter() - t0:.1f} s")
    for name, path in p["paths"].items():
        print(f"  {name:12s} {path}")
    if "pictures" in p["paths"]:
        print(f"pictures (input, teacher, pruned, pruned + fine-tuned): {p['paths']['pictures']}")
