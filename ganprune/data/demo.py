"""A small paired dataset built offline from real photos that ship inside installed wheels.

Demos and tests need real image statistics (a pruned generator that only has to reproduce noise
tells nothing), but no download. scikit-image and scikit-learn carry a dozen public-domain / CC0 /
CC BY photos; we cut them into non-overlapping tiles and derive the input half (A) of each pair
from the photo (B): Canny edges, a Gaussian blur, or grayscale. Pairs are written in the pix2pix
aligned layout, so the demo set goes through exactly the same loader as a user's data.

``layout="unaligned"`` writes the same tiles in the CycleGAN layout instead: the A halves in
``trainA``/``testA``, the B halves in ``trainB``/``testB`` (same file names; the unaligned loader draws
B at random for training, so the pairs are not used as pairs).

Train and val are split by whole source image, so no val tile shares pixels with a train tile. The
tiles and the split depend on ``size`` and ``seed`` only, not on the task, so the three tasks see the
same photos. Everything is deterministic: the same settings give the same bytes.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from ganprune.core.errors import UserError

SIZES = (64, 128, 256)
FORMAT = 1
MARKER = "demo.json"  # written into the build before the atomic rename; its presence means "complete"
LAYOUTS = {"aligned": {"train": ("train",), "val": ("val",)},
           "unaligned": {"train": ("trainA", "trainB"), "val": ("testA", "testB")}}
PARTS = ("train", "val", "trainA", "trainB", "testA", "testB", "manifest.csv", "NOTICE", MARKER)
MIN_STD = 0.04        # tiles whose grayscale std (0..1) is below this are near-flat (sky, black borders)
VAL_SHARE = (0.20, 0.30)  # val takes whole sources until it holds at least 20% of tiles, never over 30%
BOX = ("left", "top", "right", "bottom")  # manifest crop box, in pixels of the original photo
EDGE_SIGMA = 2.0      # Canny smoothing, in pixels of a 128-scale tile
BLUR_SIGMA = 2.5      # blur2sharp Gaussian, in pixels of a 128-scale tile


@dataclass(frozen=True)
class Source:
    name: str
    load: Callable[[], np.ndarray]
    licence: str
    credit: str
    scale: float = 1.0  # large or repetitive photos are shrunk so that they do not dominate the set


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load():
        import skimage.data
        img = getattr(skimage.data, name)()
        return img[0] if isinstance(img, tuple) else img  # stereo_motorcycle: (left, right, disparity)
    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load():
        from sklearn.datasets import load_sample_image
        return load_sample_image(filename)
    return load


SOURCES = (
    Source("astronaut", _skimage("astronaut"), "public domain",
           "NASA, astronaut Eileen Collins (scikit-image skimage.data.astronaut)"),
    Source("chelsea", _skimage("chelsea"), "CC0",
           "Stefan van der Walt, Chelsea the cat (scikit-image skimage.data.chelsea)"),
    Source("coffee", _skimage("coffee"), "CC0",
           "Rachel Michetti, courtesy of Pikolo Espresso Bar (scikit-image skimage.data.coffee)"),
    Source("rocket", _skimage("rocket"), "public domain",
           "SpaceX, DSCOVR launch on Falcon 9 (scikit-image skimage.data.rocket)"),
    Source("immunohistochemistry", _skimage("immunohistochemistry"), "no known copyright restrictions",
           "Center for Microscopy And Molecular Imaging, CMMI (scikit-image "
           "skimage.data.immunohistochemistry)"),
    Source("motorcycle", _skimage("stereo_motorcycle"), "Middlebury 2014 stereo benchmark, redistributed "
           "by scikit-image; cite the authors",
           "Scharstein et al., GCPR 2014, Middlebury College, left view (scikit-image "
           "skimage.data.stereo_motorcycle)"),
    Source("retina", _skimage("retina"), "CC0 1.0",
           "Mikael Haggstrom, fundus photograph, Wikimedia Commons (scikit-image skimage.data.retina)", 0.5),
    Source("hubble", _skimage("hubble_deep_field"), "public domain",
           "NASA/ESA Hubble eXtreme Deep Field (scikit-image skimage.data.hubble_deep_field)", 0.75),
    Source("china", _sklearn("china.jpg"), "CC BY 2.0",
           "danielbuechele, https://www.flickr.com/photos/danielbuechele/6061409035 "
           "(scikit-learn sample image china.jpg)"),
    Source("flower", _sklearn("flower.jpg"), "CC BY 2.0",
           "vultilion, https://www.flickr.com/photos/vultilion/6056698931 "
           "(scikit-learn sample image flower.jpg)"),
)


def _gray(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"))


def _edges(rgb: np.ndarray, zoom: float) -> np.ndarray:
    """Canny edges as black lines on white, 3 channels (the look of pix2pix's edges2* sets)."""
    from skimage.feature import canny
    edges = canny(_gray(rgb).astype(np.float64) / 255.0, sigma=EDGE_SIGMA * zoom)
    return np.repeat(np.where(edges, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _blur(rgb: np.ndarray, zoom: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter
    blurred = gaussian_filter(rgb.astype(np.float64), sigma=(BLUR_SIGMA * zoom, BLUR_SIGMA * zoom, 0),
                              mode="nearest")
    return np.clip(np.round(blurred), 0, 255).astype(np.uint8)


def _grayscale(rgb: np.ndarray, zoom: float) -> np.ndarray:
    return np.repeat(_gray(rgb)[..., None], 3, axis=2)


# A is derived from the whole (scaled) source before tiling, so tiles have no filter border effects.
TASKS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "edges2photo": _edges, "blur2sharp": _blur, "gray2color": _grayscale}


def _tiles(shape: tuple[int, int], size: int) -> list[tuple[int, int, int, int]]:
    """Non-overlapping size x size boxes (left, top, right, bottom), the grid centred in the image."""
    h, w = shape
    rows, cols = h // size, w // size
    y0, x0 = (h - rows * size) // 2, (w - cols * size) // 2
    return [(x0 + c * size, y0 + r * size, x0 + (c + 1) * size, y0 + (r + 1) * size)
            for r in range(rows) for c in range(cols)]


def _pick_val(counts: dict[str, int], seed: int) -> list[str]:
    """Whole sources for val, in a seed-given order: at least two sources and 20% of tiles, at most 30%."""
    total = sum(counts.values())
    order = [str(name) for name in np.random.default_rng(seed).permutation(sorted(counts)) if counts[name]]
    val, n = [], 0
    for name in order:
        if n >= VAL_SHARE[0] * total and len(val) >= 2:
            break
        if n + counts[name] <= VAL_SHARE[1] * total and len(val) < len(order) - 1:
            val.append(name)
            n += counts[name]
    return sorted(val or [min(order, key=lambda name: counts[name])])


def _number(x: float):
    return int(x) if float(x).is_integer() else round(x, 2)


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _settings(size: int, task: str, seed: int, layout: str = "aligned") -> dict:
    return {"generator": "ganprune.data.demo", "format": FORMAT, "task": task, "size": size, "seed": seed,
            "layout": layout}


def _existing(out: str) -> dict | None:
    """The marker of a complete demo build at ``out`` (its file counts checked), else None."""
    try:
        with open(os.path.join(out, MARKER), encoding="utf-8") as fh:
            marker = json.load(fh)
        if marker.get("generator") != "ganprune.data.demo":
            return None
        for split, folders in LAYOUTS[marker.get("layout", "aligned")].items():
            for folder in folders:
                if len(os.listdir(os.path.join(out, folder))) != marker[split]:
                    return None
        return marker
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _summary(out: str, marker: dict, seconds: float, built: bool) -> dict:
    folders = LAYOUTS[marker.get("layout", "aligned")]
    return {**{k: marker[k] for k in ("task", "size", "seed", "train", "val", "val_sources")},
            "layout": marker.get("layout", "aligned"), "seconds": round(seconds, 3), "built": built, "out": out,
            "train_dir": os.path.join(out, folders["train"][0]), "val_dir": os.path.join(out, folders["val"][0]),
            "manifest": os.path.join(out, "manifest.csv"), "notice": os.path.join(out, "NOTICE")}


def _check(size, task, seed, layout="aligned") -> tuple[int, str, int]:
    if layout not in LAYOUTS:
        raise UserError(f"layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or int(size) not in SIZES:
        raise UserError(f"size: expected one of {', '.join(map(str, SIZES))}, got {size!r}")
    if task not in TASKS:
        raise UserError(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed: expected a non-negative integer, got {seed!r}")
    return int(size), task, int(seed)


def make_demo(out, size: int = 128, task: str = "edges2photo", seed: int = 0, layout: str = "aligned") -> dict:
    """Build the demo set at ``out`` (``train/``, ``val/`` — or with ``layout="unaligned"`` ``trainA/``,
    ``trainB/``, ``testA/``, ``testB/`` — ``manifest.csv``, ``NOTICE``, ``demo.json``).

    Returns a summary: pair counts, val sources, seconds, paths, and whether anything was built
    (re-running on a complete build of the same settings does nothing). ``out`` must be missing,
    empty, or an earlier demo build (which is replaced); the new build appears in one rename.
    """
    size, task, seed = _check(size, task, seed, layout)
    out = os.path.abspath(os.fspath(out))
    start = time.perf_counter()
    marker = _existing(out)
    if marker is not None and all(marker.get(k, "aligned" if k == "layout" else None) == v
                                  for k, v in _settings(size, task, seed, layout).items()):
        return _summary(out, marker, time.perf_counter() - start, built=False)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"{out}: exists and is not a folder; give a new or empty folder for the demo set")
    if marker is None and os.path.isdir(out) and os.listdir(out):
        raise UserError(f"{out}: folder is not empty and is not a ganprune demo build; "
                        "give a new or empty folder")
    extra = sorted(set(os.listdir(out)) - set(PARTS)) if marker is not None else []
    if extra:  # replacing the earlier build would delete them
        raise UserError(f"{out}: holds an earlier demo build plus other files ({', '.join(extra[:3])}); "
                        "give a new or empty folder")

    tmp = _scratch(out, "tmp")
    try:
        marker = _build(tmp, size, task, seed, layout)
        _install(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _summary(out, marker, time.perf_counter() - start, built=True)


def _scratch(out: str, kind: str) -> str:
    """A fresh hidden folder beside ``out`` (umask permissions, unlike mkdtemp's 0700, since it becomes
    ``out``); leftovers of killed builds, whose process is gone, are removed on the way."""
    parent, base = os.path.split(out)
    os.makedirs(parent, exist_ok=True)
    prefix = f".{base}.{kind}-"
    for name in os.listdir(parent):
        pid = name[len(prefix):].split("-")[0]
        if name.startswith(prefix) and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    path = os.path.join(parent, f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.mkdir(path)
    return path


def _alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def _install(tmp: str, out: str) -> None:
    """Put the finished build at ``out`` with renames only; an earlier build there is removed after."""
    old = None
    if os.path.isdir(out):
        if os.listdir(out):
            old = _scratch(out, "old")
            os.replace(out, os.path.join(old, "build"))
        else:
            os.rmdir(out)
    os.replace(tmp, out)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _build(dest: str, size: int, task: str, seed: int, layout: str = "aligned") -> dict:
    from tqdm import tqdm

    zoom = max(1.0, size / 128)  # above 128 the sources are enlarged so 256 keeps the 128 tile count
    make_a = TASKS[task]
    rows, images = [], {}
    for src in tqdm(SOURCES, desc=f"demo {task} {size}", unit="photo", leave=False):
        photo = np.ascontiguousarray(src.load()[..., :3], dtype=np.uint8)
        scale = src.scale * zoom
        h, w = photo.shape[:2]
        if scale != 1.0:
            photo = np.asarray(Image.fromarray(photo).resize((round(w * scale), round(h * scale)),
                                                             Image.LANCZOS))
        sx, sy = photo.shape[1] / w, photo.shape[0] / h
        gray = _gray(photo).astype(np.float64) / 255.0
        kept = [box for box in _tiles(photo.shape[:2], size)
                if gray[box[1]:box[3], box[0]:box[2]].std() >= MIN_STD]
        if not kept:
            continue
        a = make_a(photo, zoom)
        for box in kept:
            l, t, r, b = box
            name = f"{src.name}_{t // size:02d}_{l // size:02d}.png"
            images[name] = np.concatenate([a[t:b, l:r], photo[t:b, l:r]], axis=1)
            rows.append({"file": name, "source": src.name, "scale": round(sx, 4),
                         **{k: _number(v / s) for k, v, s in zip(BOX, box, (sx, sy, sx, sy))},
                         "licence": src.licence, "credit": src.credit})
    counts = {src.name: sum(r["source"] == src.name for r in rows) for src in SOURCES}
    val_sources = _pick_val(counts, seed)
    folders = LAYOUTS[layout]
    for names in folders.values():
        for folder in names:
            os.makedirs(os.path.join(dest, folder))
    for row in rows:
        row["split"] = "val" if row["source"] in val_sources else "train"
        pair = images[row["file"]]
        halves = [pair] if layout == "aligned" else [pair[:, :size], pair[:, size:]]
        for folder, image in zip(folders[row["split"]], halves):
            with open(os.path.join(dest, folder, row["file"]), "wb") as fh:
                fh.write(_png_bytes(np.ascontiguousarray(image)))
    rows.sort(key=lambda r: (r["split"] != "train", r["file"]))
    with open(os.path.join(dest, "manifest.csv"), "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, ["file", "split", "source", "scale", *BOX, "licence", "credit"],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows({**r, "file": f"{folders[r['split']][0]}/{r['file']}"} for r in rows)
    with open(os.path.join(dest, "NOTICE"), "w", encoding="utf-8") as fh:
        fh.write(_notice(task, size, [s for s in SOURCES if counts[s.name]]))
    marker = {**_settings(size, task, seed, layout), "train": sum(r["split"] == "train" for r in rows),
              "val": sum(r["split"] == "val" for r in rows), "val_sources": val_sources}
    with open(os.path.join(dest, MARKER), "w", encoding="utf-8") as fh:
        json.dump(marker, fh, indent=1)
        fh.write("\n")
    return marker


def _notice(task: str, size: int, sources) -> str:
    lines = [f"ganprune demo dataset ({task}, {size}x{size} tiles), built by ganprune.data.demo.make_demo.",
             "",
             "Each image pairs an input A (left half) derived from a photo with the photo B (right half).",
             "The photos were cropped into tiles and, for A, transformed (Canny edges, Gaussian blur or",
             "grayscale). manifest.csv lists the source photo and crop box of every file.",
             "",
             "Photos licensed CC BY 2.0 (https://creativecommons.org/licenses/by/2.0/); credit:"]
    lines += [f"  - {s.name}: {s.credit}" for s in sources if s.licence.startswith("CC BY")]
    lines += ["", "Other photos (public domain, CC0, or as noted):"]
    lines += [f"  - {s.name}: {s.credit}; {s.licence}" for s in sources if not s.licence.startswith("CC BY")]
    return "\n".join(lines) + "\n"
