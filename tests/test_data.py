import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ganprune.cli import main
from ganprune.data import demo
from ganprune.data.datasets import AlignedDataset, UnalignedDataset, build_dataset
from ganprune.core.errors import UserError


def _pattern(w, h, seed):
    """An asymmetric RGB image, so flips and swaps are visible in the values."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    arr[:, 0] = 0
    arr[:, -1] = 255
    return arr


def _write_aligned(root, phase="train", n=3, w=32, h=24):
    """A|B images whose B half is the negative of A, to check that both halves share crop and flip."""
    folder = root / phase
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a = _pattern(w, h, i)
        Image.fromarray(np.concatenate([a, 255 - a], axis=1)).save(folder / f"{i:02d}.png")
    return root


def _write_domain(folder, n, w=20, h=20, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(_pattern(w, h, seed + i)).save(folder / f"{i}.png")


# --------------------------------------------------------------------------- aligned

def test_aligned_native_items(tmp_path):
    ds = AlignedDataset(_write_aligned(tmp_path, "val"), phase="val")
    assert len(ds) == 3
    item = ds[1]
    assert item["A"].shape == item["B"].shape == (3, 24, 32)
    assert item["A"].dtype == torch.float32 and item["path"].endswith("01.png")
    expected = torch.from_numpy(_pattern(32, 24, 1).astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
    assert torch.allclose(item["A"], expected, atol=1e-6)
    assert torch.allclose(item["B"], -item["A"], atol=1e-6)  # 255 - x maps to -x in [-1, 1]
    assert item["A"].min() == -1.0 and item["A"].max() == 1.0


def test_direction_swaps_halves(tmp_path):
    root = _write_aligned(tmp_path, "val")
    a2b, b2a = AlignedDataset(root, "val")[0], AlignedDataset(root, "val", direction="BtoA")[0]
    assert torch.equal(a2b["A"], b2a["B"]) and torch.equal(a2b["B"], b2a["A"])


def test_eval_transform_is_deterministic_resize(tmp_path):
    ds = AlignedDataset(_write_aligned(tmp_path, "test"), phase="test", load_size=40, crop_size=16)
    first, second = ds[0], ds[0]
    assert first["A"].shape == (3, 16, 16)
    assert torch.equal(first["A"], second["A"]) and torch.equal(first["B"], second["B"])


def test_train_crop_flip_shared_and_seeded(tmp_path):
    root = _write_aligned(tmp_path)
    flipping = AlignedDataset(root, phase="train")
    expected = torch.from_numpy(_pattern(32, 24, 0).astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
    seen = set()
    for _ in range(16):
        item = flipping[0]
        flipped = torch.equal(item["A"], expected.flip(-1))
        assert flipped or torch.equal(item["A"], expected)
        assert torch.allclose(item["B"], -item["A"], atol=1e-6)  # B got the same flip
        seen.add(flipped)
    assert seen == {True, False}
    cropping = AlignedDataset(root, phase="train", load_size=40, crop_size=32)
    for _ in range(8):
        item = cropping[0]
        assert item["A"].shape == item["B"].shape == (3, 32, 32)
        assert torch.allclose(item["B"], -item["A"], atol=0.01)  # same crop box and flip for both halves
    batches = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        batches.append(next(iter(DataLoader(cropping, batch_size=3)))["A"])
    assert batches[0].shape == (3, 3, 32, 32)
    assert torch.equal(batches[0], batches[1]) and not torch.equal(batches[0], batches[2])


def test_train_without_crop_or_flip_is_identity(tmp_path):
    ds = AlignedDataset(_write_aligned(tmp_path, w=48), phase="train", load_size=24, crop_size=24, flip=False)
    state = torch.get_rng_state()
    assert ds[0]["A"].shape == (3, 24, 24)
    assert torch.equal(torch.get_rng_state(), state)  # deterministic: the global RNG is left alone
    item = AlignedDataset(_write_aligned(tmp_path / "native"), phase="train", flip=False)[2]
    expected = torch.from_numpy(_pattern(32, 24, 2).astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
    assert torch.allclose(item["A"], expected, atol=1e-6)


def test_grayscale_channels_and_max_items(tmp_path):
    ds = AlignedDataset(_write_aligned(tmp_path, "val", n=4), phase="val", input_nc=1, max_items=2)
    item = ds[0]
    assert len(ds) == 2
    assert item["A"].shape == (1, 24, 32) and item["B"].shape == (3, 24, 32)
    gray = np.asarray(Image.fromarray(_pattern(32, 24, 0)).convert("L"), dtype=np.float32) / 127.5 - 1
    assert torch.allclose(item["A"][0], torch.from_numpy(gray), atol=1e-6)


# --------------------------------------------------------------------------- unaligned

def test_unaligned_pairing(tmp_path):
    _write_domain(tmp_path / "trainA", 3, seed=0)
    _write_domain(tmp_path / "trainB", 2, w=24, h=24, seed=10)
    serial = UnalignedDataset(tmp_path, serial=True, flip=False)
    assert len(serial) == 3
    assert [os.path.basename(serial[i]["B_path"]) for i in range(3)] == ["0.png", "1.png", "0.png"]
    item = serial[2]
    assert item["A"].shape == (3, 20, 20) and item["B"].shape == (3, 24, 24)
    assert item["A_path"].endswith(os.path.join("trainA", "2.png"))
    torch.manual_seed(0)
    drawn = {os.path.basename(UnalignedDataset(tmp_path)[0]["B_path"]) for _ in range(20)}
    assert drawn == {"0.png", "1.png"}
    swapped = UnalignedDataset(tmp_path, direction="BtoA", serial=True, crop_size=16)
    assert len(swapped) == 3 and swapped[0]["A_path"].endswith(os.path.join("trainB", "0.png"))
    assert swapped[0]["A"].shape == swapped[0]["B"].shape == (3, 16, 16)


def test_build_dataset_registry(tmp_path):
    _write_aligned(tmp_path, "val")
    assert isinstance(build_dataset(tmp_path, "aligned", phase="val", load_size=16), AlignedDataset)
    with pytest.raises(UserError, match="unknown dataset mode 'paired' .*; expected one of aligned, unaligned"):
        build_dataset(tmp_path, "paired", phase="val")
    with pytest.raises(UserError, match="'serial' is not known to mode 'aligned'"):
        build_dataset(tmp_path, "aligned", phase="val", serial=True)


# --------------------------------------------------------------------------- bad input

def _bad_text(folder):
    folder.mkdir(parents=True)
    (folder / "notes.png").write_text("not an image")
    return folder / "notes.png"


def _bad_odd(folder):
    folder.mkdir(parents=True)
    Image.new("RGB", (33, 16)).save(folder / "odd.png")
    return folder / "odd.png"


def _bad_mixed(folder):
    folder.mkdir(parents=True)
    Image.new("RGB", (32, 16)).save(folder / "a.png")
    Image.new("RGB", (40, 16)).save(folder / "b.png")
    return folder / "b.png"


@pytest.mark.parametrize("make, expect", [
    (_bad_text, "not a readable image"),
    (_bad_odd, "width 33 is odd"),
    (_bad_mixed, "differs from 16x16"),
])
def test_bad_files_name_the_file(tmp_path, make, expect):
    path = make(tmp_path / "train")
    with pytest.raises(UserError, match=expect) as info:
        AlignedDataset(tmp_path, "train")
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_bad_folders_and_options(tmp_path):
    with pytest.raises(UserError, match="no such dataset folder") as info:
        AlignedDataset(tmp_path / "missing")
    assert str(tmp_path / "missing") in str(info.value)
    with pytest.raises(UserError, match=r"val: no such folder"):
        AlignedDataset(tmp_path, "val")
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "readme.txt").write_text("x")
    with pytest.raises(UserError, match=r"train: no images found"):
        AlignedDataset(tmp_path, "train")
    _write_aligned(tmp_path, "val")
    with pytest.raises(UserError, match="crop_size: 64 is larger than load_size 32"):
        AlignedDataset(tmp_path, "val", load_size=32, crop_size=64)
    with pytest.raises(UserError, match="direction: expected one of AtoB, BtoA"):
        AlignedDataset(tmp_path, "val", direction="AB")
    with pytest.raises(UserError, match=r"00.png: 32x24 is smaller than crop_size 30"):
        AlignedDataset(_write_aligned(tmp_path / "small"), "train", crop_size=30)
    with pytest.raises(UserError, match="trainB: no such folder"):
        _write_domain(tmp_path / "trainA", 1)
        UnalignedDataset(tmp_path)


def test_unreadable_at_load_time(tmp_path):
    ds = AlignedDataset(_write_aligned(tmp_path, "val", n=1), "val")
    (tmp_path / "val" / "00.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UserError, match="00.png: not a readable image"):
        ds[0]


# --------------------------------------------------------------------------- demo set

def _manifest(root):
    with open(os.path.join(root, "manifest.csv"), newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _files(root):
    out = {}
    for directory, _, files in os.walk(root):
        for f in files:
            path = os.path.join(directory, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


@pytest.fixture(scope="module")
def demo64(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "edges64"
    return out, demo.make_demo(out, size=64, task="edges2photo", seed=0)


@pytest.mark.slow
def test_demo_counts_split_and_loader(demo64):
    out, summary = demo64
    assert summary["built"] and summary["train"] > 100 and summary["val"] > 20
    rows = _manifest(out)
    assert len(rows) == summary["train"] + summary["val"]
    by_split = {s: {r["source"] for r in rows if r["split"] == s} for s in ("train", "val")}
    assert by_split["train"].isdisjoint(by_split["val"]) and len(by_split["val"]) >= 2
    assert sorted(by_split["val"]) == summary["val_sources"]
    assert len(os.listdir(out / "train")) == summary["train"] and len(os.listdir(out / "val")) == summary["val"]
    assert {r["licence"] for r in rows if r["source"] == "china"} <= {"CC BY 2.0"}
    item = AlignedDataset(out, "val")[0]
    assert item["A"].shape == item["B"].shape == (3, 64, 64)
    assert set(item["A"].unique().tolist()) <= {-1.0, 1.0}  # edge maps are pure black/white
    assert item["B"].std() > 0.08  # flat tiles were dropped
    notice = (out / "NOTICE").read_text()
    assert "CC BY 2.0" in notice and "danielbuechele" in notice and "vultilion" in notice


@pytest.mark.slow
def test_demo_is_deterministic_and_idempotent(demo64, tmp_path):
    out, summary = demo64
    again = demo.make_demo(tmp_path / "again", size=64, task="edges2photo", seed=0)
    assert (again["train"], again["val"]) == (summary["train"], summary["val"])
    assert _files(out) == _files(tmp_path / "again")
    noop = demo.make_demo(out, size=64)
    assert not noop["built"] and noop["train"] == summary["train"]


def test_demo_refuses_foreign_folder_and_bad_settings(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(UserError, match="not empty and is not a ganprune demo build") as info:
        demo.make_demo(tmp_path / "mine", size=64)
    assert str(tmp_path / "mine") in str(info.value)
    assert os.listdir(tmp_path / "mine") == ["thesis.tex"]
    with pytest.raises(UserError, match="size: expected one of 64, 128, 256"):
        demo.make_demo(tmp_path / "x", size=100)
    with pytest.raises(UserError, match="task: expected one of edges2photo"):
        demo.make_demo(tmp_path / "x", task="sketch")


@pytest.mark.slow
def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def failing(arr):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return b"png"
    monkeypatch.setattr(demo, "_png_bytes", failing)
    with pytest.raises(KeyboardInterrupt):
        demo.make_demo(tmp_path / "out", size=64, task="gray2color")
    assert os.listdir(tmp_path) == []  # neither the output nor the temporary build folder


@pytest.mark.slow
def test_cli_make_demo_replaces_earlier_build(demo64, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(demo64[0], out)
    assert main(["data", "make-demo", str(out), "--size", "64", "--task", "gray2color"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("gray2color 64x64:") and f"{demo64[1]['train']} train" in line and str(out) in line
    assert json.loads((out / "demo.json").read_text())["task"] == "gray2color"
    a = AlignedDataset(out, "train")[0]["A"]
    assert torch.equal(a[0], a[1]) and torch.equal(a[1], a[2])  # grayscale replicated to 3 channels
    assert [p for p in os.listdir(tmp_path) if p != "copy"] == []
    (out / "teacher").mkdir()
    assert main(["data", "make-demo", str(out), "--size", "64", "--task", "gray2color"]) == 0  # same: no-op
    assert "already built" in capsys.readouterr().out
    assert main(["data", "make-demo", str(out), "--size", "64"]) == 2  # would delete teacher/
    assert "plus other files (teacher)" in capsys.readouterr().err and (out / "teacher").is_dir()


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert main(["data", "make-demo", str(tmp_path / "d"), "--size", "100"]) == 2
    assert "size: expected one of 64, 128, 256" in capsys.readouterr().err
    assert main(["data", "make-demo"]) == 2
    assert "missing OUT" in capsys.readouterr().err
