"""What the benchmarks share and a user of the library would not call: their cached teachers, a generator's
outputs over a split, FID features of image tensors, and the command-line options the CPU benchmarks share."""
from __future__ import annotations

import argparse
import os

import torch

from ganprune.data.demo import make_demo
from ganprune.metrics.quality import load_feature_extractor
from ganprune.train.teacher import train_teacher


def cached_teacher(data: str, teacher: str, *, size: int, arch: str, ngf: int, ndf: int, steps: int,
                   task: str = "edges2photo") -> str:
    """The demo set ``task`` at ``size``² in folder ``data`` and a Pix2Pix teacher trained on it (batch 4,
    seed 0) in folder ``teacher``, each built only when not complete there yet; returns the data root.
    The folder names are the caches of earlier runs (and of results keyed to the teacher): keep them."""
    dataroot = make_demo(data, size=size, task=task)["out"]
    train_teacher(dataroot, teacher, arch=arch, ngf=ngf, ndf=ndf, steps=steps, batch_size=4,
                  save_every=max(100, steps // 4), eval_every=0, progress=True)
    return dataroot


@torch.no_grad()
def outputs(G, dataset, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(A, B, G(A))`` over the whole ``dataset``, G in eval mode."""
    G.eval()
    items = [dataset[i] for i in range(len(dataset))]
    A, B = torch.stack([it["A"] for it in items]), torch.stack([it["B"] for it in items])
    return A, B, torch.cat([G(A[i:i + batch_size]) for i in range(0, len(A), batch_size)])


@torch.no_grad()
def fid_features(images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """FID Inception features [N, 2048] of images in [-1, 1], the library's bundled network."""
    net = load_feature_extractor()
    return torch.cat([net(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def run_sharing_supernet(config: dict, out: str, shared: str | None, supernet: bool) -> tuple[dict, str | None, float]:
    """``run_pipeline(config, out)`` with the supernet of its (budget, seed) copied in when one was trained
    already (``shared``); returns the result, the supernet folder to share from now on and the wall seconds."""
    import shutil
    import time

    from ganprune.pipeline import run_pipeline
    if supernet and shared and not os.path.isdir(os.path.join(out, "search", "supernet")):
        shutil.copytree(shared, os.path.join(out, "search", "supernet"))
    start = time.perf_counter()
    result = run_pipeline(config, out, progress=False)
    if supernet and shared is None:
        shared = os.path.join(out, "search", "supernet")
    return result, shared, time.perf_counter() - start


def parser(doc: str, name: str) -> argparse.ArgumentParser:
    """``--quick``, ``--out`` (default ``runs/<name>``) and ``--threads`` (torch's intra-op threads, default 2)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join("runs", name))
    ap.add_argument("--threads", type=int, default=2)
    return ap
