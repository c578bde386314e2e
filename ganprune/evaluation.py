"""Evaluate generators on a dataset split into one table: cost (MACs, params, optional CPU latency)
beside quality (PSNR/SSIM vs ground truth and vs a teacher, FID, KID ± std, optional mIoU).

The real images' Inception features are extracted once and shared by every generator in the table,
and the teacher, when given, gets its own row so that the pruned model's figures have a reference. Both are
the same for every pruned model of one teacher on one split, so they are kept in the cache
(``TeacherRowCache``): a pipeline run per budget or seed does not recompute them.
"""
from __future__ import annotations

import os

import pandas as pd
from torch import nn

from ganprune.core.errors import UserError

COLUMNS = {"psnr": "PSNR", "ssim": "SSIM", "psnr_teacher": "PSNR vs teacher", "ssim_teacher": "SSIM vs teacher",
           "fid": "FID", "kid_mean": "KID", "kid_std": "KID std", "miou": "mIoU"}


def load_model(generator=None, pruned=None, teacher=None, arch: str = "unet_256", ngf: int = 64,
               norm: str = "batch", dropout: bool = False, input_nc: int = 3,
               output_nc: int = 3) -> tuple[str, nn.Module]:
    """``(label, G)`` from exactly one of a dense checkpoint, a pruned-model file, or a teacher folder."""
    given = [name for name, v in (("generator", generator), ("pruned", pruned), ("teacher", teacher)) if v]
    if len(given) != 1:
        raise UserError("give exactly one of --generator, --pruned, --teacher "
                        f"(got {', '.join('--' + g for g in given) or 'none'})")
    if pruned:
        from ganprune.pruning.physical import load_pruned, pruned_info
        from ganprune.models.registry import kind_of
        net = load_pruned(pruned)
        spec = pruned_info(net).spec
        if (spec.get("kind") or kind_of(spec["arch"])) != "generator":
            raise UserError(f"{pruned}: holds a discriminator; evaluation needs a generator")
        return f"pruned {os.path.basename(os.fspath(pruned))}", net
    if teacher:
        from ganprune.train.teacher import load_teacher
        G, _, spec = load_teacher(teacher)
        return f"teacher {spec['G']['arch']} ngf {spec['G'].get('ngf')}", G
    from ganprune.models.checkpoint import load_generator
    net = load_generator(generator, arch=arch, ngf=ngf, norm=norm, input_nc=input_nc, output_nc=output_nc,
                         dropout=dropout)
    return f"{arch} ngf {ngf} ({os.path.basename(os.fspath(generator))})", net


def _channels(net: nn.Module) -> tuple[int, int]:
    """(input, output) channels: the first and last convolution in registration order."""
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    return (convs[0].in_channels, convs[-1].out_channels) if convs else (0, 0)


class TeacherRowCache:
    """The teacher's quality row and the real images' features of one evaluation, in the cache folder
    (``ganprune.train.teacher.cache_dir()/evaluate``), keyed by the teacher's tensors, the split's image files
    (bytes) and every setting that changes a figure; written atomically, read back only on an exact key."""

    def __init__(self, teacher: nn.Module, data, settings: dict):
        import hashlib
        import json

        import torch
        h = hashlib.sha256(json.dumps({**settings, "torch": torch.__version__}, sort_keys=True).encode())
        for name, t in teacher.state_dict().items():
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        for path in list(getattr(data, "paths", [])) + list(getattr(data, "a_paths", [])) + \
                list(getattr(data, "b_paths", [])):
            with open(path, "rb") as fh:
                h.update(os.path.basename(path).encode() + fh.read())
        from ganprune.train.teacher import cache_dir
        self.path = os.path.join(cache_dir(), "evaluate", h.hexdigest()[:32] + ".pt")

    def load(self) -> dict | None:
        import torch
        try:
            return torch.load(self.path, weights_only=True)
        except Exception:   # absent, or unreadable (another version, a torn disk): compute again
            return None

    def save(self, reference, teacher_quality: dict) -> None:
        from ganprune.core.io import atomic_torch_save
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            atomic_torch_save({"reference": reference, "teacher": teacher_quality}, self.path)
        except OSError:   # a read-only cache costs time, not results
            pass


def evaluate(models: dict[str, nn.Module], dataroot, phase: str = "val", mode: str = "aligned",
             direction: str = "AtoB", size: int | None = None, n: int | None = None, fid: bool = True,
             kid: bool = True, fid_weights=None, teacher: nn.Module | None = None, latency: bool = False,
             latency_threads: int = 2, latency_repeats: int = 20, segmenter=None, num_classes: int | None = None,
             batch_size: int = 8, device="auto", cache: bool = True,
             progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """One row per generator in ``models`` (plus ``"teacher"`` when given) and the ``computed_on`` facts.

    ``segmenter`` is a TorchScript file or module (see ``quality.load_segmenter``); ``fid_weights`` a
    TorchScript feature network or pytorch-fid's FID Inception state dict (see
    ``quality.load_feature_extractor``), default the bundled FID Inception. ``cache`` reuses the teacher's
    row and the real features of an identical earlier evaluation (``TeacherRowCache``).
    """
    from ganprune.data.datasets import build_dataset
    from ganprune.metrics.complexity import complexity
    from ganprune.models.sizes import check_image_size
    from ganprune.metrics.quality import image_quality, load_feature_extractor, load_segmenter, real_features
    if not models:
        raise UserError("evaluate: no generators given")
    if n is not None and n < 1:
        raise UserError(f"--n: expected a positive number of images, got {n}")
    nets = dict(models)
    if teacher is not None:
        nets["teacher"] = teacher
    in_nc, out_nc = _channels(next(iter(nets.values())))
    options = {"direction": direction, "load_size": size, "crop_size": size, "flip": False,
               "input_nc": in_nc, "output_nc": out_nc}
    if mode == "unaligned":
        options["serial"] = True
    data = build_dataset(dataroot, mode=mode, phase=phase, **options)
    if len(data) == 0:
        raise UserError(f"{os.path.join(os.fspath(dataroot), phase)}: no images in split {phase!r}")
    if (fid or kid) and out_nc != 3:
        raise UserError(f"FID/KID need RGB outputs but the generator makes {out_nc} channel(s); use --no-fid")
    if isinstance(segmenter, (str, os.PathLike)):
        segmenter = load_segmenter(segmenter)
    h, w = data[0]["A"].shape[-2:]
    for name, net in nets.items():
        check_image_size(net, h, w, f"{name!r}")
    extractor = load_feature_extractor(fid_weights) if (fid or kid) else None
    if progress:
        print(f"evaluation: {expected_seconds(nets, data, n, batch_size, extractor, teacher, device)}", flush=True)
    from ganprune.core.device import pick_device
    keyed = teacher is not None and cache and segmenter is None and not isinstance(fid_weights, nn.Module)
    store = TeacherRowCache(teacher, data, {
        "phase": phase, "mode": mode, "direction": direction, "size": size, "n": n, "fid": fid, "kid": kid,
        "fid_weights": os.fspath(fid_weights) if fid_weights else None, "batch_size": batch_size,
        "device": pick_device(device or "auto").type, "channels": [in_nc, out_nc]}) if keyed else None
    hit = store.load() if store is not None else None
    if hit is not None:
        reference = hit["reference"]
    else:
        reference = real_features(data, extractor, n, batch_size, device, progress) if extractor is not None else None
    rows, computed_on = [], None
    for name, net in nets.items():
        if name == "teacher" and hit is not None:
            q = hit["teacher"]
        else:
            q = image_quality(net, data, teacher=teacher if name != "teacher" else None, fid=fid, kid=kid, n=n,
                              feature_extractor=extractor, batch_size=batch_size, device=device, split=phase,
                              reference_features=reference, segmenter=segmenter, num_classes=num_classes,
                              progress=progress)
            if name == "teacher" and store is not None:
                store.save(reference, q)
        c = complexity(net, (1, in_nc, h, w))
        row = {"model": name, "GMACs": c["GMACs"], "real GMACs": c["real_GMACs"], "params (M)": c["params_M"]}
        row.update({label: q[key] for key, label in COLUMNS.items()})
        row["eval s"] = q["seconds"]["total"]
        rows.append(row)
        computed_on = q["computed_on"]
    table = pd.DataFrame(rows)
    if latency:
        from ganprune.metrics.latency import measure_latency
        lat = measure_latency(nets, (1, in_nc, h, w), threads=latency_threads, repeats=latency_repeats,
                              progress=progress, warm=True)   # as a ms budget predicts: each model as if alone
        for backend, part in lat.groupby("backend", sort=False):
            table[f"ms {backend}"] = table["model"].map(dict(zip(part["model"], part["median_ms"])))
        computed_on["latency"] = (f"CPU median of {int(lat['repeats'].iloc[0])} calls at batch 1 (warm), "
                                  f"{latency_threads} threads, "
                                  f"OMP_WAIT_POLICY={lat.attrs.get('omp_wait_policy', 'unset')}")
    keep = [col for col in table.columns if not table[col].isna().all()]   # drop metrics nobody asked for
    return table[keep], computed_on


def expected_seconds(nets: dict, data, n, batch_size: int, extractor, teacher, device) -> str:
    """How long the evaluation will take, from one timed batch of every network it runs: each generator
    (the teacher again for every row compared with it) and the feature network once per row plus once for
    the real images. Latency timing, when asked for, comes on top."""
    import time

    import torch

    from ganprune.core.device import pick_device
    from ganprune.core.timing import duration
    dev = pick_device(device or "auto")
    count = min(n, len(data)) if n else len(data)
    x = torch.stack([data[i]["A"] for i in range(min(batch_size, count))]).to(dev)

    def timed(net, inputs):
        start = time.perf_counter()
        with torch.inference_mode():
            out = net(inputs)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - start, out

    seconds, fake = {}, None
    for name, net in nets.items():
        was = (next(net.parameters()).device, net.training)
        net.to(dev).eval()
        seconds[name], fake = timed(net, x)
        net.to(was[0]).train(was[1])
    per_batch = sum(seconds.values()) + (seconds["teacher"] * (len(nets) - 1) if teacher is not None else 0.0)
    if extractor is not None:
        per_batch += timed(extractor, fake.float())[0] * (len(nets) + 1)   # fed as image_quality feeds it
    expected = per_batch * -(-count // len(x))
    return (f"{len(nets)} generator(s) on {count} images, expected to take about {duration(expected)} "
            f"(one timed batch of {len(x)} per network)")


def report_markdown(table: pd.DataFrame, computed_on: dict) -> str:
    from ganprune.metrics.complexity import MACS_NOTE
    from ganprune.metrics.quality import describe
    text = table.to_markdown(index=False, floatfmt=".4g") + "\n\n" + describe(computed_on)
    if computed_on.get("latency"):
        text += f"; latency: {computed_on['latency']}"
    return text + f"\n{MACS_NOTE}.\n"


def write_report(table: pd.DataFrame, computed_on: dict, out) -> dict:
    """``eval.csv`` and ``eval.md`` (table + computed-on line) in ``out``, each written atomically."""
    from ganprune.core.io import atomic_write_text
    out = os.fspath(out)
    paths = {"csv": os.path.join(out, "eval.csv"), "md": os.path.join(out, "eval.md")}
    atomic_write_text(paths["csv"], table.to_csv(index=False))
    atomic_write_text(paths["md"], report_markdown(table, computed_on))
    return paths
