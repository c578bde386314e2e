"""G-only pruning (no discriminator checkpoint) of built-in and bring-your-own generators, end to end
through `ganprune prune --config`: D is built fresh, the search scores G alone, every stage runs and the
files reload."""
import os
import sys

import pandas as pd
import pytest
import torch
import yaml

from ganprune.cli import main
from ganprune.data.demo import make_demo
from ganprune.models.checkpoint import load_generator, save_checkpoint
from ganprune.pruning.physical import load_pruned, pruned_info

DATA = os.path.join(os.path.dirname(__file__), "data")
FAST = {"supernet_steps": 0, "calib_images": 4, "calib_batch": 4, "finetune_steps": 2, "fid": False, "eval_images": 4, "latency": False,
        "g_agent": "greedy", "g_agent_options": {"refine": False}}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("gonly")
    return {"aligned": make_demo(root / "aligned", size=64, task="gray2color")["out"],
            "unaligned": make_demo(root / "unaligned", size=64, task="gray2color", layout="unaligned")["out"],
            "root": root}


def _prune(tmp_path, config: dict, capsys):
    cfg = tmp_path / "prune.yaml"
    cfg.write_text(yaml.safe_dump({**FAST, **config, "out": str(tmp_path / "run")}))
    assert main(["prune", "--config", str(cfg)]) == 0
    out = tmp_path / "run"
    winner = yaml.safe_load((out / "widths.yaml").read_text())
    assert winner["g_only"] is True and winner["discriminator"]["widths"] == {}
    assert winner["generator"]["macs"] <= winner["budget"]["generator"]["limit"]
    assert winner["budget"]["discriminator"] is None
    history = pd.read_csv(out / "history.csv")
    assert (history["balance"] == 0).all() and (history["score_d"] == 0).all() and (history["d_macs"] == 0).all()
    log = (out / "log.txt").read_text()
    assert "G-only" in log and "fresh" in log
    assert "G-only search" in capsys.readouterr().out
    assert "G only (no discriminator checkpoint" in (out / "metrics.md").read_text()
    G, D = load_pruned(out / "finetune" / "G.pt"), load_pruned(out / "finetune" / "D.pt")
    assert not G.training and not D.training          # load_pruned gives eval mode
    fresh = load_pruned(out / "pruned_D.pt")
    assert any(not torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), D.state_dict().values())), \
        "fine-tuning trained the fresh D"
    assert (out / "G.onnx").stat().st_size > 0
    return out, winner, G, D


@pytest.mark.slow
def test_g_only_unet_aligned(demo, tmp_path, capsys, one_thread):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "latest_net_G.pth", load_generator(arch="unet_64", ngf=8))
    out, winner, G, D = _prune(tmp_path, {"generator": str(tmp_path / "latest_net_G.pth"), "g_arch": "unet_64",
                                          "ngf": 8, "ndf": 8, "dataroot": demo["aligned"]}, capsys)
    assert D.model[0].in_channels == 6                     # conditional PatchGAN: cat(A, B) for aligned data
    assert G(torch.zeros(1, 3, 64, 64)).shape == (1, 3, 64, 64)


@pytest.mark.slow
def test_g_only_resnet_instance_norm_unaligned(demo, tmp_path, capsys, one_thread):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "latest_net_G.pth", load_generator(arch="resnet_6blocks", ngf=8, norm="instance"))
    out, winner, G, D = _prune(tmp_path, {"generator": str(tmp_path / "latest_net_G.pth"), "g_arch": "resnet_6blocks",
                                          "ngf": 8, "ndf": 8, "norm": "instance", "mode": "unaligned",
                                          "dataroot": demo["unaligned"]}, capsys)
    assert D.model[0].in_channels == 3                     # unconditional PatchGAN for unaligned data
    # 10% is below what this tiny net's space reaches: one line before anything runs, saying the smallest
    cfg = tmp_path / "prune.yaml"
    assert main(["prune", "--config", str(cfg), "--g-budget", "0.1", "--out", str(tmp_path / "run10")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "smallest reachable is" in err and "17.9% of dense" in err, err
    assert not (tmp_path / "run10" / "search" / "history.csv").exists()


@pytest.mark.slow
def test_g_only_bring_your_own_class(demo, tmp_path, capsys, monkeypatch, one_thread):
    monkeypatch.syspath_prepend(DATA)
    sys.modules.pop("byo_nets", None)
    from byo_nets import TinyResNetG
    torch.manual_seed(0)
    net = TinyResNetG(base=16, depth=2)
    torch.save(net.state_dict(), tmp_path / "latest_net_G.pth")
    out, winner, G, D = _prune(tmp_path, {"generator": str(tmp_path / "latest_net_G.pth"),
                                          "g_arch": "byo_nets:TinyResNetG", "g_arch_options": {"base": 16, "depth": 2},
                                          "ndf": 8, "mode": "unaligned", "dataroot": demo["unaligned"]}, capsys)
    assert pruned_info(G).spec == {"arch": "byo_nets:TinyResNetG", "kind": "generator", "base": 16, "depth": 2}
    assert winner["generator"]["spec"] == pruned_info(G).spec
    assert type(G).__name__ == "TinyResNetG" and G.stem[1].out_channels <= 16


def test_recipe_needing_teacher_d_is_refused_without_one(demo, tmp_path, capsys):
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "G.pth", load_generator(arch="unet_64", ngf=8))
    from ganprune.core.options import PIPELINE, resolve
    from ganprune.train.pair import pair_from_options
    G, D, g_spec, d_spec = pair_from_options(resolve(PIPELINE, {"generator": str(tmp_path / "G.pth"),
                                                                "g_arch": "unet_64", "ngf": 8}))
    assert D is None and d_spec["input_nc"] == 6
    from ganprune.train.recipe import get_recipe
    from ganprune.train.pair import fresh_discriminator
    with pytest.raises(Exception, match="needs the teacher's discriminator"):
        get_recipe("dgl")(G, fresh_discriminator(d_spec), G, None, True, {})


def test_finetune_that_made_g_worse_is_flagged():
    from ganprune.report import AFTER, BEFORE, finetune_made_worse
    table = pd.DataFrame({"model": ["teacher", BEFORE, AFTER], "PSNR vs teacher": [None, 34.3, 26.5]})
    assert "34.30 -> 26.50 dB" in finetune_made_worse(table)
    table.loc[2, "PSNR vs teacher"] = 35.0
    assert finetune_made_worse(table) is None
