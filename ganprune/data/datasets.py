"""Paired (aligned) and unpaired (unaligned) image datasets in the reference pix2pix/CycleGAN layouts.

Users bring the folders they trained their teacher on, so the layouts, the side-by-side A|B split, the
bicubic resize, the [-1, 1] scaling and the train-time crop/flip follow the reference code. Two things
differ on purpose: items are already swapped for ``direction="BtoA"`` (``A`` is always the network
input), and evaluation phases use a deterministic resize instead of a random crop.

Every image header is read when the dataset is built, so a bad file is reported before training
starts, as one ``UserError`` line naming it, instead of deep inside a DataLoader worker.
"""
from __future__ import annotations

import inspect
import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ganprune.core.errors import UserError
from ganprune.core.plugins import Registry

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
DIRECTIONS = ("AtoB", "BtoA")


def list_images(folder: str, max_items: int | None = None) -> list[str]:
    """Sorted image files under ``folder`` (recursively, like the reference); errors name the folder."""
    if not os.path.isdir(folder):
        what = "is not a folder" if os.path.exists(folder) else "no such folder"
        raise UserError(f"{folder}: {what} (expected a folder of images)")
    paths = []
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        paths += [os.path.join(directory, f) for f in sorted(files)
                  if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    if not paths:
        raise UserError(f"{folder}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return paths[:max_items] if max_items else paths


def image_size(path: str) -> tuple[int, int]:
    """(width, height) from the header only; a non-image or unreadable file is a ``UserError``."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable image ({_first_line(exc)})") from None


def load_image(path: str, channels: int) -> Image.Image:
    """Decode ``path`` as 8-bit RGB (3) or grayscale (1); 16-bit images are scaled, not clipped."""
    try:
        with Image.open(path) as im:
            if im.mode.startswith("I;16") or im.mode == "I":
                im = Image.fromarray((np.asarray(im, dtype=np.float64) / 257.0).round().clip(0, 255)
                                     .astype(np.uint8))
            return im.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable image ({_first_line(exc)})") from None


def to_tensor(img: Image.Image) -> torch.Tensor:
    """uint8 PIL image -> float32 [C, H, W] in [-1, 1] (the reference Normalize(0.5, 0.5))."""
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0)
    return arr.unsqueeze(0) if arr.ndim == 2 else arr.permute(2, 0, 1).contiguous()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _positive(name: str, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


class _PairTransform:
    """Resize / crop / flip shared by both datasets.

    ``load_size`` None keeps the native size, otherwise resizes to a ``load_size`` square (bicubic).
    Training crops a random ``crop_size`` square; evaluation resizes straight to ``crop_size``.
    Random draws come from torch's global RNG, which DataLoader seeds per worker.
    """

    def __init__(self, phase, load_size, crop_size, flip):
        self.train = phase == "train"
        self.load_size = _positive("load_size", load_size)
        self.crop_size = _positive("crop_size", crop_size)
        self.flip = self.train if flip is None else bool(flip)
        if self.load_size and self.crop_size and self.crop_size > self.load_size:
            raise UserError(f"crop_size: {self.crop_size} is larger than load_size {self.load_size}")

    def check(self, sizes: dict[str, tuple[int, int]]) -> None:
        """Every image must yield the same output size; otherwise batches cannot be stacked."""
        if self.load_size:
            return
        if self.crop_size:
            if self.train:
                for path, (w, h) in sizes.items():
                    if min(w, h) < self.crop_size:
                        raise UserError(f"{path}: {w}x{h} is smaller than crop_size {self.crop_size}; "
                                        "give a larger load_size or a smaller crop_size")
            return
        first, ref = next(iter(sizes.items()))
        for path, size in sizes.items():
            if size != ref:
                raise UserError(f"{path}: size {size[0]}x{size[1]} differs from {ref[0]}x{ref[1]} of {first}; "
                                "give load_size to resize all images to one size")

    def params(self, w: int, h: int) -> dict:
        """One draw of crop position and flip, to apply identically to the images of a pair."""
        lw, lh = (self.load_size, self.load_size) if self.load_size else (w, h)
        out = {"load": (lw, lh), "box": None, "flip": False}
        if self.crop_size and self.train:
            if (lw, lh) != (self.crop_size, self.crop_size):  # no draw, so no RNG use, when nothing to crop
                x = int(torch.randint(0, lw - self.crop_size + 1, ()).item())
                y = int(torch.randint(0, lh - self.crop_size + 1, ()).item())
                out["box"] = (x, y, x + self.crop_size, y + self.crop_size)
        elif self.crop_size:
            out["load"] = (self.crop_size, self.crop_size)
        if self.flip:
            out["flip"] = bool(torch.rand(()).item() < 0.5)
        return out

    @staticmethod
    def apply(img: Image.Image, p: dict) -> torch.Tensor:
        if img.size != p["load"]:
            img = img.resize(p["load"], Image.BICUBIC)
        if p["box"]:
            img = img.crop(p["box"])
        if p["flip"]:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return to_tensor(img)


def _channels(name: str, value: int) -> int:
    if value not in (1, 3):
        raise UserError(f"{name}: expected 1 (grayscale) or 3 (RGB), got {value!r}")
    return value


def _direction(value: str) -> bool:
    if value not in DIRECTIONS:
        raise UserError(f"direction: expected one of {', '.join(DIRECTIONS)}, got {value!r}")
    return value == "BtoA"


class AlignedDataset(Dataset):
    """Pix2pix pairs: ``root/<phase>/*`` images holding A (left half) and B (right half) side by side.

    Items: ``{"A": input [C,H,W], "B": target [C,H,W], "path": str}`` in [-1, 1]; ``direction="BtoA"``
    swaps the halves. ``input_nc`` / ``output_nc`` are the channels of A and B after the swap.
    """

    def __init__(self, root, phase: str = "train", direction: str = "AtoB", load_size: int | None = None,
                 crop_size: int | None = None, flip: bool | None = None, max_items: int | None = None,
                 input_nc: int = 3, output_nc: int = 3):
        self.root, self.phase = os.fspath(root), phase
        if not os.path.isdir(self.root):
            raise UserError(f"{self.root}: no such dataset folder")
        self.swap = _direction(direction)
        self.input_nc, self.output_nc = _channels("input_nc", input_nc), _channels("output_nc", output_nc)
        self.transform = _PairTransform(phase, load_size, crop_size, flip)
        self.paths = list_images(os.path.join(self.root, phase), _positive("max_items", max_items))
        halves = {}
        for path in self.paths:
            w, h = image_size(path)
            if w % 2:
                raise UserError(f"{path}: width {w} is odd, so its A and B halves differ in size "
                                "(an aligned image holds A|B side by side at equal widths)")
            halves[path] = (w // 2, h)
        self.transform.check(halves)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        ab = load_image(path, 3)
        w, h = ab.size
        if w % 2:  # the file changed since the header scan
            raise UserError(f"{path}: width {w} is odd, so its A and B halves differ in size")
        a, b = ab.crop((0, 0, w // 2, h)), ab.crop((w // 2, 0, w, h))
        if self.swap:
            a, b = b, a
        if self.input_nc == 1:
            a = a.convert("L")
        if self.output_nc == 1:
            b = b.convert("L")
        p = self.transform.params(w // 2, h)
        return {"A": self.transform.apply(a, p), "B": self.transform.apply(b, p), "path": path}


class UnalignedDataset(Dataset):
    """CycleGAN domains: ``root/<phase>A`` and ``root/<phase>B``, unpaired.

    A is indexed; B is drawn at random (torch RNG) or, with ``serial``, by the same index modulo its
    size, as in the reference. Each image gets its own crop/flip. Length = the larger domain.
    """

    def __init__(self, root, phase: str = "train", direction: str = "AtoB", load_size: int | None = None,
                 crop_size: int | None = None, flip: bool | None = None, serial: bool = False,
                 max_items: int | None = None, input_nc: int = 3, output_nc: int = 3):
        self.root, self.phase = os.fspath(root), phase
        if not os.path.isdir(self.root):
            raise UserError(f"{self.root}: no such dataset folder")
        swap = _direction(direction)
        self.input_nc, self.output_nc = _channels("input_nc", input_nc), _channels("output_nc", output_nc)
        self.serial = bool(serial)
        self.transform = _PairTransform(phase, load_size, crop_size, flip)
        max_items = _positive("max_items", max_items)
        sides = [list_images(os.path.join(self.root, phase + s), max_items) for s in "AB"]
        self.a_paths, self.b_paths = sides[::-1] if swap else sides
        for paths in (self.a_paths, self.b_paths):
            self.transform.check({p: image_size(p) for p in paths})

    def __len__(self) -> int:
        return max(len(self.a_paths), len(self.b_paths))

    def __getitem__(self, index: int) -> dict:
        a_path = self.a_paths[index % len(self.a_paths)]
        if self.serial:
            b_path = self.b_paths[index % len(self.b_paths)]
        else:
            b_path = self.b_paths[int(torch.randint(0, len(self.b_paths), ()).item())]
        out = {"A_path": a_path, "B_path": b_path}
        for key, path, nc in (("A", a_path, self.input_nc), ("B", b_path, self.output_nc)):
            img = load_image(path, nc)
            out[key] = self.transform.apply(img, self.transform.params(*img.size))
        return out


DATASETS = Registry("dataset mode")
DATASETS.add("aligned", AlignedDataset)
DATASETS.add("unaligned", UnalignedDataset)


def held_out_phase(root, mode: str = "aligned") -> str | None:
    """The held-out split of a dataset folder: ``val``, else ``test`` (``valA``/``testA`` for unaligned
    sets); None when there is neither."""
    suffix = "A" if mode == "unaligned" else ""
    for phase in ("val", "test"):
        if os.path.isdir(os.path.join(os.fspath(root), phase + suffix)):
            return phase
    return None


def build_dataset(root, mode: str = "aligned", phase: str = "train", **kw) -> Dataset:
    """The dataset class registered as ``mode``, with option names checked against it."""
    cls = DATASETS.lookup(mode)
    known = inspect.signature(cls).parameters
    for key in kw:
        if key not in known or key in ("root", "phase"):
            options = ", ".join(k for k in known if k not in ("root", "phase"))
            raise UserError(f"dataset option {key!r} is not known to mode {mode!r}; known: {options}")
    return cls(root, phase=phase, **kw)
