"""What a user sees and can trust: the pictures, the better-of-two choice, both MAC counts, stage forecasts."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from ganprune.cli import main
from ganprune.metrics.complexity import complexity
from ganprune.models.checkpoint import load_generator
from ganprune.pipeline import judge_slice, run_pipeline
from ganprune.report import GRID_ROWS, grid_indices, image_grid
from test_pipeline import tiny_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_config(tmp_path_factory.mktemp("trust"), rounds=2, calib_images=4, eval_images=4)


# --------------------------------------------------------------------------- both MAC counts

def test_transposed_conv_has_the_conventional_and_the_real_count():
    # 4 -> 6 channels, 3x3, stride 2, 8x8 -> 16x16. The convention charges every output position all 9
    # taps of every input channel: 16·16 · 9 · 4 · 6. Really, along each axis 23 of the 8·3 (input, tap)
    # pairs land inside the output (the first row's tap 0 falls on the padding): 23² · 4 · 6.
    t = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, bias=False)
    c = complexity(t, (1, 4, 8, 8))
    assert c["macs"] == 16 * 16 * 9 * 4 * 6 == 55296
    assert c["real_macs"] == 23 * 23 * 4 * 6 == 12696
    # Brute force: count the multiply-adds that touch the output by running the conv on one-hot inputs.
    ones = torch.ones(1, 1, 3, 3)
    taps = 0
    for i in range(8):
        for j in range(8):
            x = torch.zeros(1, 1, 8, 8)
            x[0, 0, i, j] = 1
            taps += int(nn.functional.conv_transpose2d(x, ones, stride=2, padding=1, output_padding=1).sum())
    assert c["real_macs"] == taps * 4 * 6
    # A plain conv is counted alike by both; a U-Net's decoder (4x4, stride 2) does about a quarter of its
    # charge (per axis 62 of 16·4 pairs land inside; the convention charges 32·4).
    assert complexity(nn.Conv2d(4, 6, 3, padding=1), (1, 4, 8, 8))["real_macs"] == \
        complexity(nn.Conv2d(4, 6, 3, padding=1), (1, 4, 8, 8))["macs"]
    up = nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1, bias=False)
    c = complexity(up, (1, 8, 16, 16))
    assert c["macs"] == 32 * 32 * 16 * 64 and c["real_macs"] == 62 * 62 * 64


def test_eval_table_names_both_counts(tiny, tmp_path, capsys):
    assert main(["eval", "--generator", tiny["generator"], "--arch", "unet_64", "--ngf", "8", "--dataroot",
                 tiny["dataroot"], "--n", "3", "--no-fid", "--out", str(tmp_path / "ev")]) == 0
    out = capsys.readouterr().out
    assert "real GMACs" in out and "the field's convention" in out
    import pandas as pd
    row = pd.read_csv(tmp_path / "ev" / "eval.csv").iloc[0]
    c = complexity(load_generator(arch="unet_64", ngf=8), (1, 3, 64, 64))
    assert row["GMACs"] == pytest.approx(c["GMACs"]) and row["real GMACs"] == pytest.approx(c["real_GMACs"])
    assert row["real GMACs"] < row["GMACs"] / 2
    # ...and its pictures: input and the generator, GRID_ROWS fixed images.
    grid = Image.open(tmp_path / "ev" / "grid.png")
    assert grid.size == (2 * 128, 14 + GRID_ROWS * 128)


# --------------------------------------------------------------------------- pictures

def test_grid_has_a_tile_per_image_and_model_and_is_the_same_every_run(tiny, tmp_path):
    torch.manual_seed(0)
    nets = {"a": load_generator(arch="unet_64", ngf=8), "b": load_generator(arch="unet_64", ngf=4)}
    r = image_grid(nets, tiny["dataroot"], tmp_path / "g.png", phase="val", size=64, rows=3)
    assert r["rows"] == 3 and r["columns"] == ["input", "a", "b"]
    img = Image.open(tmp_path / "g.png").convert("RGB")
    assert img.size == (3 * 128, 14 + 3 * 128)        # 64² tiles shown at 128²
    # The input column holds the chosen val images, enlarged.
    from ganprune.data.datasets import build_dataset
    val = build_dataset(tiny["dataroot"], "aligned", "val", flip=False, load_size=64, crop_size=64)
    assert grid_indices(len(val), 3) == [len(val) // 6, len(val) // 2, 5 * len(val) // 6]
    first = val[grid_indices(len(val), 3)[0]]["A"]
    tile = torch.tensor(np.asarray(img.crop((0, 14, 128, 142)).resize((64, 64), Image.NEAREST)),
                        dtype=torch.float32).permute(2, 0, 1)
    expected = first.clamp(-1, 1).add(1).mul(127.5).round()
    assert (tile - expected.expand(3, -1, -1)).abs().max() <= 1
    before = open(tmp_path / "g.png", "rb").read()
    image_grid(nets, tiny["dataroot"], tmp_path / "g.png", phase="val", size=64, rows=3)
    assert open(tmp_path / "g.png", "rb").read() == before


# --------------------------------------------------------------------------- never ship worse

def test_judge_slice_is_part_of_the_training_split():
    assert judge_slice(4) == [] and judge_slice(5) == [2]
    assert judge_slice(402) == sorted(set(judge_slice(402))) and len(judge_slice(402)) == 16
    assert all(0 <= i < 402 for i in judge_slice(402))


def test_what_ships_is_judged_by_what_the_recipe_trains_for():
    from ganprune.pipeline import judged_by
    from ganprune.report import AFTER, BEFORE, finetune_made_worse
    assert judged_by("pix2pix", paired=True) == "psnr_vs_ground_truth"    # learns from the truth, not the teacher
    assert judged_by("pix2pix", paired=False) == "psnr_vs_teacher"        # no truth to compare with
    assert judged_by("density", paired=True) == "psnr_vs_teacher"
    table = pd.DataFrame({"model": [BEFORE, AFTER], "PSNR vs teacher": [25.0, 24.0], "PSNR": [18.7, 20.0]})
    assert finetune_made_worse(table, "psnr_vs_ground_truth") is None
    assert "PSNR vs teacher 25.00 -> 24.00 dB" in finetune_made_worse(table, "psnr_vs_teacher")


@pytest.mark.slow
@pytest.mark.parametrize("recipe, lr, ships", [("density", 0.5, "pruned_G.pt"), ("pix2pix", None, "finetune/G.pt")])
def test_pipeline_ships_the_better_of_pruned_and_fine_tuned(tiny, tmp_path, monkeypatch, recipe, lr, ships):
    # A fine-tune that diverges (the trainer's learning rate at 0.5) leaves G further from the teacher it
    # distils: the pruned G ships. pix2pix learns from the ground truth (the teacher is a random net here, far
    # from it): judged by the truth, the fine-tuned G ships.
    import onnx
    import onnxruntime as ort

    import ganprune.pipeline as pipeline
    from ganprune.pruning.physical import load_pruned
    if lr:
        real = pipeline.finetune_pruned
        monkeypatch.setattr(pipeline, "finetune_pruned", lambda *a, **k: real(*a, **k, lr=lr))
    out = tmp_path / "run"
    steps = 30 if recipe == "pix2pix" else 3
    r = run_pipeline({**tiny, "recipe": recipe, "finetune_steps": steps}, out, progress=False)
    choice = yaml.safe_load(open(out / "finetune" / "choice.yaml"))
    by = "psnr_vs_ground_truth" if recipe == "pix2pix" else "psnr_vs_teacher"
    assert choice["judged_by"] == by and "psnr_vs_teacher" in choice and "psnr_vs_ground_truth" in choice
    assert choice["ships"] == ships, choice
    assert (choice[by]["finetune/G.pt"] < choice[by]["pruned_G.pt"]) == (ships == "pruned_G.pt")
    assert "training images held out of fine-tuning" in choice["judged_on"]
    # G.onnx is the shipped file, and metrics.md says which it is.
    meta = {p.key: p.value for p in onnx.load(out / "G.onnx").metadata_props}
    assert f"({ships})" in meta["stage"]
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    got = ort.InferenceSession(str(out / "G.onnx")).run(None, {"input": x.numpy()})[0]
    want = load_pruned(out / ships)(x).detach().numpy()
    assert abs(got - want).max() < 1e-4
    text = open(out / "metrics.md").read()
    assert f"Ships: {ships}" in text and ("Warning" not in text or ships == "finetune/G.pt")
    assert r["paths"]["pictures"].endswith("grid.png")
    grid = Image.open(r["paths"]["pictures"])
    assert grid.size == (4 * 128, 14 + GRID_ROWS * 128)    # input, teacher, pruned, pruned + fine-tuned


# --------------------------------------------------------------------------- time before it is spent

def test_forecast_says_the_expected_time_once_from_the_first_units(capsys):
    import time

    from ganprune.core.timing import Forecast, duration
    f = Forecast("work", 20, unit="round")
    for _ in range(20):
        time.sleep(0.02)
        f.tick()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("work:")]
    assert len(lines) == 1 and lines[0].startswith("work: 20 rounds, expected to take about ")
    said = float(lines[0].split("about ")[1].split(" s")[0])
    assert 0.2 <= said <= 2       # 20 × 0.02 s, give or take a busy machine
    quiet = Forecast("short", 3)
    for _ in range(3):
        quiet.tick()
    assert capsys.readouterr().out == ""
    assert (duration(40), duration(210), duration(7200)) == ("40 s", "3.5 min", "2.0 h")


def test_eval_says_its_expected_time_before_it_starts(tiny, capsys):
    from ganprune.evaluation import evaluate
    G = load_generator(arch="unet_64", ngf=8)
    evaluate({"G": G}, tiny["dataroot"], n=5, fid=False, kid=False, teacher=G, progress=True)
    out = capsys.readouterr().out
    assert "evaluation: 2 generator(s) on 5 images, expected to take about" in out
