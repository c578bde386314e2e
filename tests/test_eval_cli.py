import math

import pandas as pd
import pytest
import torch
import yaml

from ganprune.cli import main
from ganprune.data.demo import make_demo
from ganprune.metrics.complexity import complexity
from ganprune.metrics.quality import PSNR_CAP
from ganprune.models.checkpoint import load_discriminator, load_generator, save_checkpoint
from ganprune.pruning.physical import prune, pruned_info, save_pruned

SPEC = {"arch": "unet_64", "ngf": 8, "norm": "batch"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The 64² demo set, a dense unet_64 ngf 8 checkpoint, a pruned copy, and a teacher folder of the dense G."""
    root = tmp_path_factory.mktemp("eval")
    data = make_demo(root / "demo64", size=64)["out"]
    dense = load_generator(None, **SPEC)
    save_checkpoint(root / "latest_net_G.pth", dense)
    pruned = prune(dense, {"down1": 4, "down4": 24, "up3": 8}, torch.zeros(1, 3, 64, 64)).eval()
    save_pruned(root / "pruned.pt", pruned, SPEC, pruned_info(pruned).widths)
    teacher = root / "teacher"
    teacher.mkdir()
    save_checkpoint(teacher / "latest_net_G.pth", dense)
    save_checkpoint(teacher / "latest_net_D.pth", load_discriminator(None, ndf=8))
    (teacher / "teacher.yaml").write_text(yaml.safe_dump({"G": dict(SPEC, input_nc=3, output_nc=3),
                                                          "D": {"arch": "basic", "ndf": 8, "input_nc": 6}}))
    return {"root": root, "data": str(data), "dense": str(root / "latest_net_G.pth"),
            "pruned": str(root / "pruned.pt"), "teacher": str(teacher), "net": pruned}


def test_eval_pruned_with_teacher_reference_writes_csv_and_markdown(setup, tmp_path, capsys):
    out = tmp_path / "report"
    rc = main(["eval", "--pruned", setup["pruned"], "--dataroot", setup["data"], "--n", "5", "--no-fid",
               "--teacher-for-reference", setup["teacher"], "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0 and "| model" in printed and "computed on 5 images of split val at 64x64" in printed
    table = pd.read_csv(out / "eval.csv")
    assert list(table["model"]) == ["pruned pruned.pt", "teacher"]
    assert "FID" not in table.columns and "KID" not in table.columns
    expected = complexity(setup["net"], (1, 3, 64, 64))
    assert table.loc[0, "GMACs"] == pytest.approx(expected["GMACs"])
    assert table.loc[0, "params (M)"] == pytest.approx(expected["params_M"])
    assert table.loc[1, "GMACs"] > table.loc[0, "GMACs"]
    assert 0 < table.loc[0, "PSNR"] < 40 and 0 < table.loc[0, "SSIM"] < 1
    assert 0 < table.loc[0, "PSNR vs teacher"] < PSNR_CAP and math.isnan(table.loc[1, "PSNR vs teacher"])
    md = (out / "eval.md").read_text()
    assert "| pruned pruned.pt" in md and "PSNR/SSIM per-image mean" in md


def test_eval_dense_against_its_own_teacher_is_perfect(setup, tmp_path, capsys):
    rc = main(["eval", "--generator", setup["dense"], "--arch", "unet_64", "--ngf", "8", "--dataroot", setup["data"],
               "--n", "3", "--no-fid", "--teacher-for-reference", setup["teacher"], "--out", str(tmp_path)])
    assert rc == 0
    table = pd.read_csv(tmp_path / "eval.csv")
    assert table.loc[0, "PSNR vs teacher"] == PSNR_CAP and table.loc[0, "SSIM vs teacher"] == pytest.approx(1.0)
    assert table.loc[0, "PSNR"] == pytest.approx(table.loc[1, "PSNR"])


class Brightness(torch.nn.Module):
    """Two-class 'segmenter': class 1 where the mean RGB (in [0, 1]) exceeds 0.5."""

    def forward(self, x):
        m = x.mean(1, keepdim=True)
        return torch.cat([0.5 - m, m - 0.5], 1)


@pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:DeprecationWarning")
def test_eval_unaligned_has_no_paired_scores(setup, tmp_path):
    """CycleGAN layout: no ground truth pairs, so PSNR/SSIM vs GT are left out; mIoU from a segmenter."""
    from PIL import Image

    sources = sorted((setup["root"] / "demo64" / "val").iterdir())[:3]
    for side in "AB":
        (tmp_path / "cg" / f"val{side}").mkdir(parents=True)
    for i, path in enumerate(sources):
        img = Image.open(path)
        img.crop((0, 0, 64, 64)).save(tmp_path / "cg" / "valA" / f"{i}.png")
        img.crop((64, 0, 128, 64)).save(tmp_path / "cg" / "valB" / f"{i}.png")
    torch.jit.script(Brightness()).save(str(tmp_path / "seg.pt"))
    rc = main(["eval", "--pruned", setup["pruned"], "--dataroot", str(tmp_path / "cg"), "--mode", "unaligned",
               "--no-fid", "--segmenter", str(tmp_path / "seg.pt"), "--out", str(tmp_path / "r")])
    table = pd.read_csv(tmp_path / "r" / "eval.csv")
    assert rc == 0 and "PSNR" not in table.columns and 0 <= table.loc[0, "mIoU"] <= 1


@pytest.mark.parametrize("argv,message", [
    (["--dataroot", "D"], "exactly one of --generator, --pruned, --teacher"),
    (["--pruned", "P", "--teacher", "T", "--dataroot", "D"], "exactly one of"),
    (["--pruned", "P"], "missing --dataroot"),
    (["--pruned", "P", "--dataroot", "D", "--n", "0"], "--n must be >= 1"),
    (["--pruned", "{root}/nope.pt", "--dataroot", "D"], "nope.pt"),
    (["--pruned", "P", "--dataroot", "{root}/nowhere"], "nowhere"),
    (["--pruned", "P", "--dataroot", "D", "--fid-weights", "P"], "missing key 'Conv2d_1a_3x3.conv.weight'"),
    (["--teacher", "{root}", "--dataroot", "D"], "teacher.yaml"),
])
def test_bad_inputs_exit_2_with_one_line(setup, capsys, argv, message):
    subs = {"P": setup["pruned"], "D": setup["data"], "T": setup["teacher"]}
    argv = [subs.get(a, a).format(root=setup["root"]) for a in argv]
    assert main(["eval", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ganprune: error:") and message in err and "\n" not in err


@pytest.mark.slow
def test_eval_with_fid_kid_and_latency(setup, tmp_path, capsys):
    rc = main(["eval", "--pruned", setup["pruned"], "--dataroot", setup["data"], "--n", "4", "--batch-size", "4",
               "--latency", "--latency-repeats", "2", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert rc == 0
    row = pd.read_csv(tmp_path / "eval.csv").iloc[0]
    assert row["FID"] > 0 and math.isfinite(row["KID"])
    assert "KID std" not in row.index        # 4 images: every KID subset is the whole set, so no std
    assert row["ms torch"] > 0 and row["ms onnxruntime"] > 0
    assert "FID/KID vs 4 real images, FID Inception-v3" in printed and "TF-bilinear resize 64x64 -> 299x299" in printed
    assert "KID over all 4 images at once (too few for subsets: no std)" in printed
    assert "with N = 4 < 1000 images FID/KID are biased" in printed and "latency: CPU median of 2 calls at batch 1 (warm)" in printed


def test_teacher_row_and_real_features_come_from_the_cache_the_second_time(setup, tmp_path, monkeypatch):
    """Same teacher, split and settings: the second evaluation reads the teacher's row and the real features
    from the cache (no feature pass over the real images) and its table is identical; another teacher misses."""
    import ganprune.evaluation as ev
    from ganprune.metrics import quality
    from ganprune.models.checkpoint import load_generator
    monkeypatch.setenv("GANPRUNE_CACHE", str(tmp_path))
    calls = []
    real = quality.real_features
    monkeypatch.setattr(quality, "real_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    teacher = load_generator(setup["dense"], **SPEC)
    run = lambda t: ev.evaluate({"pruned": setup["net"]}, setup["data"], n=4, teacher=t, progress=False)[0]
    first = run(teacher)
    second = run(teacher)
    assert len(calls) == 1 and len(list((tmp_path / "evaluate").glob("*.pt"))) == 1
    pd.testing.assert_frame_equal(first.drop(columns="eval s"), second.drop(columns="eval s"))
    assert first.set_index("model").loc["teacher", "KID"] == second.set_index("model").loc["teacher", "KID"]
    other = load_generator(None, **SPEC)   # fresh weights: another key
    run(other)
    assert len(calls) == 2 and len(list((tmp_path / "evaluate").glob("*.pt"))) == 2
