import os

import pandas as pd
import pytest
import torch
import yaml

from ganprune.cli import main
from ganprune.data.demo import make_demo
from ganprune.core.errors import UserError
from ganprune.models.checkpoint import load_discriminator, load_generator, save_checkpoint
from ganprune.core.options import STAGES
from ganprune.pipeline import resolve_config, run_pipeline
from ganprune.pruning.physical import pruned_info

OUTPUTS = ["metrics.csv", "metrics.md", "pareto.png", "G.onnx", "pruned_G.pt", "pruned_D.pt", "finetune/G.pt",
           "finetune/D.pt", "widths.yaml", "history.csv", "config.yaml", "search/history.csv"]


def tiny_config(root, **overrides) -> dict:
    """Fresh-init unet_64 (ngf 8) / basic (ndf 8) checkpoints and the 64² demo set under ``root``, as a prune
    config (uniform 'template' agents: one evaluation each, so the search costs a second)."""
    torch.manual_seed(0)
    save_checkpoint(root / "G.pth", load_generator(arch="unet_64", ngf=8))
    save_checkpoint(root / "D.pth", load_discriminator(ndf=8))
    data = make_demo(root / "data", size=64, task="gray2color")["out"]
    return {"generator": str(root / "G.pth"), "discriminator": str(root / "D.pth"), "g_arch": "unet_64", "ngf": 8,
            "ndf": 8, "dataroot": data, "g_agent": "template", "d_agent": "template", "rounds": 4, "calib_images": 8,
            "finetune_steps": 3, "supernet_steps": 4, "fid": False, "eval_images": 8, "latency": False, **overrides}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_config(tmp_path_factory.mktemp("pipeline"))


def _mtimes(out):
    return {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in OUTPUTS}


@pytest.mark.slow
def test_pipeline_writes_everything_resumes_and_runs_one_stage(tiny, tmp_path, capsys):
    out = str(tmp_path / "run")
    r = run_pipeline(tiny, out, progress=False)
    assert r["stages"] == {s: "ran" for s in STAGES}
    for f in OUTPUTS + ["log.txt"]:
        assert os.path.getsize(os.path.join(out, f)) > 0, f
    assert sorted(os.listdir(os.path.join(out, ".done"))) == sorted(STAGES)
    table = pd.read_csv(os.path.join(out, "metrics.csv")).set_index("model")
    assert list(table.index) == ["teacher", "pruned, before fine-tuning", "pruned + fine-tuned"]
    teacher, final = table.loc["teacher"], table.loc["pruned + fine-tuned"]
    assert final["GMACs"] <= 0.25 * teacher["GMACs"] * 1.0001 and final["D GMACs"] <= 0.5 * teacher["D GMACs"] * 1.0001
    assert final["params (M)"] < teacher["params (M)"] and 5 < final["PSNR"] < 60
    assert table.loc["pruned, before fine-tuning", "GMACs"] == final["GMACs"]
    with open(os.path.join(out, "pareto.png"), "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    winner = yaml.safe_load(open(os.path.join(out, "widths.yaml")))
    assert winner["generator"]["macs"] == round(final["GMACs"] * 1e9)
    saved = yaml.safe_load(open(os.path.join(out, "config.yaml")))
    assert saved["rounds"] == 4 and saved["recipe"] == "density" and saved["phase"] == "train"
    assert "computed on 8 images of split val" in open(os.path.join(out, "metrics.md")).read()

    # A re-run skips every finished stage and touches no output.
    before = _mtimes(out)
    r2 = run_pipeline(tiny, out, progress=False)
    assert r2["stages"] == {s: "skipped" for s in STAGES}
    assert _mtimes(out) == before
    assert open(os.path.join(out, "log.txt")).read().count("skipped (finished earlier") == len(STAGES)

    # One stage alone, through the CLI: export rewrites G.onnx, leaves the fine-tuned weights alone.
    cfg = tmp_path / "my.yaml"
    cfg.write_text(yaml.safe_dump(tiny))
    capsys.readouterr()
    assert main(["prune", "--config", str(cfg), "--out", out, "--stage", "export"]) == 0
    printed = capsys.readouterr().out
    assert "export ran" in printed and "pruned + fine-tuned" in printed and os.path.join(out, "G.onnx") in printed
    after = _mtimes(out)
    assert after["G.onnx"] > before["G.onnx"] and after["finetune/G.pt"] == before["finetune/G.pt"]
    assert not os.path.exists(os.path.join(out, ".done", "report"))   # its input changed: redone next time

    # A changed fine-tuning option redoes fine-tuning onwards (resumed: 3 -> 5 steps), not the search.
    r3 = run_pipeline({**tiny, "finetune_steps": 5}, out, progress=False)
    assert r3["stages"] == {"search": "skipped", "prune": "skipped", "finetune": "ran", "evaluate": "ran",
                            "export": "ran", "report": "ran"}
    assert "steps_run: 2" in open(os.path.join(out, ".done", "finetune")).read()
    assert os.stat(os.path.join(out, "history.csv")).st_mtime_ns == before["history.csv"]

    # A changed search option starts the search and the fine-tuning over (no mixing of old scores/weights).
    r4 = run_pipeline({**tiny, "finetune_steps": 5, "l1_weight": 0.5}, out, progress=False)
    assert r4["stages"] == {s: "ran" for s in STAGES}
    log = open(os.path.join(out, "log.txt")).read()
    assert "(l1_weight): redoing the stages from search on" in log and "starting the search over" in log
    assert "steps_run: 5" in open(os.path.join(out, ".done", "finetune")).read()
    assert (pd.read_csv(os.path.join(out, "search", "history.csv"))["phase"] == "search").sum() == 1


def test_stage_needs_its_inputs(tiny, tmp_path):
    with pytest.raises(UserError, match=r"pruned_G\.pt: not found; run the prune stage first"):
        run_pipeline(tiny, tmp_path / "empty", stages=["finetune"], progress=False)
    with pytest.raises(UserError, match=r"finetune/G\.pt: not found"):
        run_pipeline(tiny, tmp_path / "empty", stages=["export"], progress=False)


def test_config_is_checked(tiny, tmp_path, capsys):
    with pytest.raises(UserError, match="unknown option 'finetune_stepz'"):
        run_pipeline({**tiny, "finetune_stepz": 3}, tmp_path, progress=False)
    with pytest.raises(UserError, match="stage 'train'"):
        run_pipeline(tiny, tmp_path, stages=["train"], progress=False)
    c = resolve_config({"rounds": 5})
    assert c["rounds"] == 5 and c["g_budget"] == "0.25" and c["fid"] is True and c["finetune_steps"] == 1000
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataroot: x\nroundz: 3\n")
    assert main(["prune", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "unknown option 'roundz'" in capsys.readouterr().err
    assert main(["prune", "--out", str(tmp_path / "o")]) == 2
    assert "missing --dataroot" in capsys.readouterr().err


def test_search_split_must_not_be_val(tiny, tmp_path):
    with pytest.raises(UserError, match="evaluation split"):
        run_pipeline({**tiny, "phase": "val"}, tmp_path / "o", progress=False)


def test_winner_starts_from_its_supernet_slice(tiny, tmp_path):
    """With a supernet the search scores slices, and the pruned G handed to fine-tuning is the winner's slice
    (the supernet's shared weights, not the teacher's), BatchNorm re-estimated."""
    from ganprune.pruning.physical import load_pruned
    out = str(tmp_path / "run")
    config = {**tiny, "supernet_steps": 6}
    run_pipeline(config, out, stages=["search", "prune"], progress=False)
    state = torch.load(os.path.join(out, "search", "supernet", "supernet_G.pt"), weights_only=True)
    teacher = torch.load(tiny["generator"], weights_only=True)
    G = load_pruned(os.path.join(out, "pruned_G.pt"))
    shared = load_generator(arch="unet_64", ngf=8)
    shared.load_state_dict(state)
    from ganprune.pruning.physical import channel_ranking, prune
    x = torch.zeros(1, 3, 64, 64)
    ranking = channel_ranking(load_generator(tiny["generator"], arch="unet_64", ngf=8), x)
    sliced = prune(shared, pruned_info(G).widths, x, ranking=ranking)
    for (name, a), (_, b) in zip(G.named_parameters(), sliced.named_parameters()):
        assert torch.equal(a, b), name
    moved = [k for k in state if k.endswith("weight") and not torch.equal(state[k], teacher[k])]
    assert moved, "the supernet's weights should differ from the teacher's after training"
    # Without a supernet the same stage prunes the teacher's own weights.
    out0 = str(tmp_path / "run0")
    run_pipeline({**tiny, "supernet_steps": 0}, out0, stages=["search", "prune"], progress=False)
    assert not os.path.exists(os.path.join(out0, "search", "supernet"))


def test_supernet_time_budget_and_gan_term_through_the_pipeline(tiny, tmp_path):
    """``supernet_steps: 2s`` with ``supernet_lambda_gan``: the search trains the supernet with the teacher's D
    (conditional, as the pair's spec says) for the count the budget became; the prune stage, a separate call,
    reloads that run from its recorded count instead of timing or training again."""
    out = tmp_path / "run"
    config = {**tiny, "supernet_steps": "2s", "supernet_lambda_gan": 0.1}
    run_pipeline(config, str(out), stages=["search"], progress=False)
    folder = out / "search" / "supernet"
    recorded = yaml.safe_load((folder / "supernet_budget.yaml").read_text())
    state = torch.load(folder / "supernet_state.pt", weights_only=True)
    assert recorded["given"] == "2s" and state["step"] == recorded["steps"] >= 1
    assert state["config"]["recipe"] == "supernet_gan" and "D" in state["nets"]
    assert state["nets"]["D"]["model.0.weight"].shape[1] == 6          # D sees cat(A, B)
    before = (folder / "supernet_state.pt").stat().st_mtime_ns
    run_pipeline(config, str(out), stages=["prune"], progress=False)
    assert (folder / "supernet_state.pt").stat().st_mtime_ns == before


def test_given_widths_are_checked_against_the_budgets(tiny, tmp_path):
    """`--widths` is checked like any candidate: widths over a budget are refused in one line naming the file
    and the budget, before anything is written; widths that fit are recorded feasible, with the budgets."""
    given = tmp_path / "full.yaml"     # no group named: every group at full width
    given.write_text(yaml.safe_dump({"generator": {"widths": {}}, "discriminator": {"widths": {}}}))
    out = tmp_path / "run"
    with pytest.raises(UserError) as info:
        run_pipeline({**tiny, "widths": str(given)}, out, stages=["search"], progress=False)
    message = str(info.value)
    assert message.startswith(f"{given}: the G widths cost ") and "over g_budget 0.25: " in message
    assert "\n" not in message and not os.path.exists(out / "search" / "widths.yaml")
    with pytest.raises(UserError, match=r"the D widths cost .* over d_budget 0\.5: "):
        run_pipeline({**tiny, "widths": str(given), "g_budget": 1.0}, out, stages=["search"], progress=False)
    run_pipeline({**tiny, "widths": str(given), "g_budget": 1.0, "d_budget": 1.0}, out, stages=["search"],
                 progress=False)
    winner = yaml.safe_load((out / "widths.yaml").read_text())
    assert winner["budget"]["generator"]["limit"] == winner["generator"]["macs"]   # the dense G, within 100%
    history = pd.read_csv(out / "history.csv")
    assert list(history["phase"]) == ["given"] and history["feasible"].all()


def test_latency_timing_options_matter_only_with_a_ms_budget():
    """A run folder from before the latency backend's default changed is not redone under a MACs budget; under
    a ms budget the backend decides the widths, so a change there redoes the search."""
    from ganprune.pipeline import _changed_keys, resolve_config
    new = resolve_config({"dataroot": "d", "generator": "g.pth", "g_budget": 0.25})
    old = {**new, "latency_backend": "torch+fold", "latency_threads": 1}
    assert _changed_keys(old, new) == []
    ms_new, ms_old = {**new, "g_budget": "3ms"}, {**old, "g_budget": "3ms"}
    assert _changed_keys(ms_old, ms_new) == ["latency_backend", "latency_threads"]
    assert _changed_keys(old, {**new, "d_budget": "2ms"}) == ["d_budget", "latency_backend", "latency_threads"]
