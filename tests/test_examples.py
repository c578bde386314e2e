import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

import ganprune.demo as demo
import ganprune.train.teacher as teacher
from ganprune.cli import main
from ganprune.pipeline import resolve_config
from ganprune.pruning.physical import pruned_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
CONFIGS = ["pix2pix_unet", "pix2pix_resnet", "cyclegan_resnet", "cyclegan_g_only"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ganprune.data.demo import make_demo
    from ganprune.models.checkpoint import load_discriminator, load_generator, save_checkpoint
    root = tmp_path_factory.mktemp("examples")
    save_checkpoint(root / "G.pth", load_generator(arch="unet_64", ngf=8))
    save_checkpoint(root / "D.pth", load_discriminator(ndf=8))
    return {"generator": str(root / "G.pth"), "discriminator": str(root / "D.pth"),
            "dataroot": make_demo(root / "data", size=64, task="gray2color")["out"]}


@pytest.mark.parametrize("name", CONFIGS)
def test_example_configs_are_valid_prune_configs(name, tmp_path):
    path = os.path.join(EXAMPLES, "configs", name + ".yaml")
    values = yaml.safe_load(open(path))
    c = resolve_config(values)   # every key is a `ganprune prune` option
    assert c["g_budget"] == 0.25 and float(c["d_budget"]) == 0.5 and c["phase"] == "train"
    assert (c["discriminator"] is None) == name.endswith("g_only")
    assert c["recipe"] == ("cyclegan" if name.startswith("cyclegan") else "density")
    from ganprune.cli import parse
    args, _ = parse(["prune", "--config", path, "--out", str(tmp_path)])  # and the command's --config loader
    #                                                                       accepts the file as it is
    assert args.g_arch == values["g_arch"] and args.out == str(tmp_path)
    if name.startswith("cyclegan"):
        from ganprune.core.options import conditional_from_options
        assert not conditional_from_options(vars(args)) and args.mode == "unaligned" and args.norm == "instance"


@pytest.mark.slow
def test_unet_config_runs_end_to_end_tiny(tiny, tmp_path, capsys):
    values = yaml.safe_load(open(os.path.join(EXAMPLES, "configs", "pix2pix_unet.yaml")))
    values.update(tiny, g_arch="unet_64", ngf=8, ndf=8, size=64, direction="AtoB", rounds=2, calib_images=4,
                  g_agent="template", d_agent="template", finetune_steps=2, supernet_steps=3, fid=False, eval_images=4,
                  latency=False, out=str(tmp_path / "run"))
    cfg = tmp_path / "unet.yaml"
    cfg.write_text(yaml.safe_dump(values))
    assert main(["prune", "--config", str(cfg)]) == 0
    printed = capsys.readouterr().out
    assert "| teacher" in printed and "pruned + fine-tuned" in printed
    table = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert table["GMACs"].iloc[2] <= 0.25 * table["GMACs"].iloc[0] * 1.0001
    assert (tmp_path / "run" / "G.onnx").stat().st_size > 0
    assert yaml.safe_load((tmp_path / "run" / "widths.yaml").read_text())["generator"]["macs"] > 0


@pytest.mark.slow
def test_prune_checkpoint_example_selftest(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(EXAMPLES, "prune_pix2pix_checkpoint.py"), "--selftest",
                        "--out", str(tmp_path), "--rounds", "16"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = dict(line.split(": ", 1) for line in r.stdout.splitlines() if line.startswith(("G MACs", "D MACs")))
    g_before, g_after = (int(v.replace(",", "")) for v in lines["G MACs"].split(" (")[0].split(" -> "))
    assert g_before == 20486976 and g_after <= 0.25 * g_before   # fresh unet_64 ngf 8 at 64x64
    assert (tmp_path / "pruned_G.onnx").stat().st_size > 0 and (tmp_path / "pruned_D.pt").exists()


def test_custom_agent_through_the_cli(tiny, tmp_path, capsys):
    agent_file = os.path.join(EXAMPLES, "custom_agent.py")
    assert main(["agents", "--agent-file", agent_file]) == 0
    assert "local_search" in capsys.readouterr().out
    out = tmp_path / "search"
    assert main(["search", "--generator", tiny["generator"], "--discriminator", tiny["discriminator"],
                 "--g-arch", "unet_64", "--ngf", "8", "--ndf", "8", "--dataroot", tiny["dataroot"],
                 "--calib-images", "4", "--m", "2", "--rounds", "4", "--g-agent", "local_search",
                 "--d-agent", "template", "--agent-file", agent_file, "--supernet-steps", "0", "--out", str(out)]) == 0
    assert "best: round" in capsys.readouterr().out
    h = pd.read_csv(out / "history.csv")
    assert (h["phase"] == "search").sum() == 4 and h["g_feasible"].all() and (h["error"].isna() | (h["error"] == "")).all()
    assert h["g_widths"].nunique() > 1     # it moved away from its starting point


@pytest.mark.slow
def test_demo_quick_prints_before_after_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GANPRUNE_CACHE", str(tmp_path))
    # The real quick demo takes 1-2 minutes; the same command with a 10-step teacher and one-shot uniform
    # agents instead of the greedy ones (their search is tested in test_search/test_agents).
    monkeypatch.setitem(teacher.DEMO_TEACHERS, "quick", {**teacher.DEMO_TEACHERS["quick"], "steps": 10})
    monkeypatch.setitem(demo.DEMO_PRUNE, "quick", {**demo.DEMO_PRUNE["quick"], "g_agent": "template",
                                                   "d_agent": "template", "rounds": 2, "finetune_steps": 3, "supernet_steps": 3,
                                                   "eval_images": 8})
    assert main(["demo", "--quick"]) == 0
    printed = capsys.readouterr().out
    for text in ("| teacher", "pruned, before fine-tuning", "pruned + fine-tuned", "ms torch", "ms onnxruntime",
                 "PSNR", "GMACs", "D GMACs", "G.onnx", "metrics.md"):
        assert text in printed, text
    out = next(tmp_path.glob("demo/pruned_*"))
    table = pd.read_csv(out / "metrics.csv").set_index("model")
    assert table.loc["pruned + fine-tuned", "GMACs"] <= 0.25 * table.loc["teacher", "GMACs"] * 1.0001
    assert table.loc["pruned + fine-tuned", "D GMACs"] <= 0.5 * table.loc["teacher", "D GMACs"] * 1.0001
    assert (table["ms torch"] > 0).all() and (table["ms onnxruntime"] > 0).all()


@pytest.mark.slow
def test_readme_search_quick_start_with_the_nni_search_yaml(tiny, tmp_path, capsys):
    """`ganprune search --config examples/nni_search/search.yaml` (the NNI file: its NNI-only keys are left to
    `ganprune nni`), pointed at tiny checkpoints, with default rounds: ends with widths.yaml."""
    values = yaml.safe_load(open(os.path.join(EXAMPLES, "nni_search", "search.yaml")))
    values.pop("teacher")
    values.update(tiny, **{"g-arch": "unet_64", "ngf": 8, "ndf": 8, "calib-images": 4, "calib-batch": 4,
                           "supernet-steps": 20})   # tiny sizes: a short supernet (the default is 300 steps)
    cfg = tmp_path / "search.yaml"
    cfg.write_text(yaml.safe_dump(values))
    assert "infeasible-penalty" in values
    assert main(["search", "--config", str(cfg), "--out", str(tmp_path / "s")]) == 0
    winner = yaml.safe_load((tmp_path / "s" / "widths.yaml").read_text())
    assert winner["generator"]["macs"] <= winner["budget"]["generator"]["limit"]
    history = pd.read_csv(tmp_path / "s" / "history.csv")
    assert len(history) >= 60                           # rounds sized from the agents (no `rounds` given)
    # the widths then go to `ganprune prune --widths` / `ganprune apply` without a new search
    assert main(["apply", "--config", str(cfg), "--widths", str(tmp_path / "s" / "widths.yaml"),
                 "--out", str(tmp_path / "a")]) == 0
    from ganprune.pruning.physical import load_pruned
    g = load_pruned(tmp_path / "a" / "pruned_G.pt")
    assert pruned_info(g).widths == winner["generator"]["widths"] and not g.training
    assert yaml.safe_load((tmp_path / "a" / "widths.yaml").read_text())["generator"]["widths"] == \
        winner["generator"]["widths"]


@pytest.mark.slow
def test_readme_prune_quick_start_g_only_example(tiny, tmp_path):
    """`ganprune prune --config examples/configs/cyclegan_g_only.yaml` at tiny size (unaligned demo data, a
    resnet_6blocks G checkpoint alone, default rounds): every stage runs and widths.yaml comes out."""
    from ganprune.data.demo import make_demo
    from ganprune.models.checkpoint import load_generator, save_checkpoint
    values = yaml.safe_load(open(os.path.join(EXAMPLES, "configs", "cyclegan_g_only.yaml")))
    save_checkpoint(tmp_path / "G.pth", load_generator(arch="resnet_6blocks", ngf=8, norm="instance"))
    values.update(generator=str(tmp_path / "G.pth"), g_arch="resnet_6blocks", ngf=8, ndf=8, size=64,
                  dataroot=make_demo(tmp_path / "data", size=64, task="gray2color", layout="unaligned")["out"],
                  calib_images=4, finetune_steps=2, fid=False, eval_images=4, latency=False,
                  g_agent_options={"refine": False}, supernet_steps=20, out=str(tmp_path / "run"))
    cfg = tmp_path / "g_only.yaml"
    cfg.write_text(yaml.safe_dump(values))
    assert main(["prune", "--config", str(cfg)]) == 0
    winner = yaml.safe_load((tmp_path / "run" / "widths.yaml").read_text())
    assert winner["g_only"] and winner["generator"]["macs"] <= winner["budget"]["generator"]["limit"]
    assert (tmp_path / "run" / "G.onnx").stat().st_size > 0
