"""One supernet, a family of G budgets: parsing, one search per budget on one supernet, reuse when a budget is
added, the pipeline per budget in its own folder."""
import glob
import os

import pandas as pd
import pytest
import torch
import yaml

from ganprune.cli import main
from ganprune.core.errors import UserError
from ganprune.core.options import resolve, SEARCH
from ganprune.pipeline import resolve_config, run_pipeline
from ganprune.pruning.physical import load_pruned, pruned_info

from test_pipeline import tiny_config



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_config(tmp_path_factory.mktemp("family"))


def _g_macs_full(tiny):
    from ganprune.models.checkpoint import load_generator
    from ganprune.pruning.space import SearchSpace
    G = load_generator(tiny["generator"], arch="unet_64", ngf=8)
    space = SearchSpace.from_model(G, torch.zeros(1, 3, 64, 64), arch="unet_64")
    return space.macs(space.full_widths())


def test_budget_lists_are_read_and_bad_ones_refused(tmp_path, capsys):
    assert resolve_config({"g_budget": "25%, 10%"})["g_budget"] == ["25%", "10%"]
    assert resolve_config({"g_budget": [0.25, "10%", "4ms"]})["g_budget"] == [0.25, "10%", "4ms"]
    assert resolve_config({"g_budget": "25%"})["g_budget"] == "25%"     # one budget: as before
    for value, expected in [("25%,abc", "g_budget item 'abc': expected a fraction"),
                            ("25%,0.25", "the budget '0.25' is given twice ('25%' is the same)"),
                            ("25%,,10%", "an empty budget in '25%,,10%'"),
                            (["25%"], "or a list of two or more of them"),
                            ("25%,150%", "at most 100%")]:
        with pytest.raises(UserError, match=r"^g_budget") as info:
            resolve(SEARCH, {"g_budget": value})
        assert expected in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError, match="^d_budget: expected one budget"):
        resolve(SEARCH, {"d_budget": "0.5,0.3"})
    # On the command line: one line, exit 2, nothing written.
    assert main(["search", "--dataroot", str(tmp_path), "--out", str(tmp_path / "o"), "--g-budget", "25%,abc"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ganprune: error: --g-budget item 'abc': expected") and "\n" not in err
    assert not (tmp_path / "o").exists()
    # NNI runs one budget per experiment: a list is refused there, saying where lists work.
    from ganprune.nni.space import Setup
    with pytest.raises(UserError, match=r"^g_budget: expected one budget, got '25%,10%' \(several G budgets"):
        Setup(dataroot="D", g_budget="25%,10%")
    # One widths file cannot serve several budgets.
    with pytest.raises(UserError, match="^widths: one widths file prunes to one G"):
        run_pipeline({"dataroot": "D", "g_budget": "25%,10%", "widths": "w.yaml"}, tmp_path / "p", progress=False)
    assert not (tmp_path / "p").exists()


def test_same_budget_in_two_spellings_is_refused_before_any_training(tiny, tmp_path, capsys):
    full = _g_macs_full(tiny)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny))
    out = tmp_path / "s"
    assert main(["search", "--config", str(config), "--out", str(out), "--g-budget", f"25%,{full // 4}"]) == 2
    err = capsys.readouterr().err
    assert f"g_budget: '{full // 4}' and '25%' are the same budget" in err
    assert not glob.glob(str(out / "**" / "supernet_state.pt"), recursive=True)


def test_a_broken_family_table_is_refused_before_any_training(tiny, tmp_path, capsys):
    """A family.csv that is not one is named in one line before the supernet is trained, and left as it was."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny))
    for command in ("search", "prune"):
        out = tmp_path / command
        out.mkdir()
        (out / "family.csv").write_text("not,a\nfamily,table\n")
        assert main([command, "--config", str(config), "--out", str(out), "--g-budget", "25%,10%"]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "family.csv: not a family table (no g_budget column)" in err
        assert (out / "family.csv").read_text() == "not,a\nfamily,table\n"
        assert not _supernet_files(out)


def _supernet_files(out):
    return sorted(glob.glob(os.path.join(out, "**", "supernet_state.pt"), recursive=True))


@pytest.mark.slow
def test_family_search_one_supernet_one_widths_file_per_budget(tiny, tmp_path, capsys):
    full = _g_macs_full(tiny)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny))
    out = str(tmp_path / "search")
    assert main(["search", "--config", str(config), "--out", out, "--g-budget", "40%,25%"]) == 0
    assert "family:" in capsys.readouterr().out
    # One supernet, where a single search keeps it, trained for its steps once.
    assert _supernet_files(out) == [os.path.join(out, "supernet", "supernet_state.pt")]
    log = pd.read_csv(os.path.join(out, "supernet", "supernet_log.csv"))
    assert log["step"].max() == tiny["supernet_steps"] and log["step"].is_unique
    state = torch.load(os.path.join(out, "supernet", "supernet_state.pt"), weights_only=True)
    assert state["config"]["recipe_options"]["max_macs"] == pytest.approx(1.2 * 0.40, abs=1e-4)  # the largest budget
    weights = os.path.join(out, "supernet", "supernet_G.pt")
    before = (os.stat(weights).st_mtime_ns, open(weights, "rb").read())
    # One widths file per budget, each within its budget.
    for folder, fraction in (("g40%", 0.40), ("g25%", 0.25)):
        winner = yaml.safe_load(open(os.path.join(out, folder, "widths.yaml")))
        assert 0 < winner["generator"]["macs"] <= fraction * full
        assert winner["budget"]["generator"]["limit"] == pytest.approx(fraction * full)
        for f in ("history.csv", "pareto.csv"):
            assert os.path.getsize(os.path.join(out, folder, f)) > 0
    table = pd.read_csv(os.path.join(out, "family.csv"), dtype={"g_budget": str})
    assert list(table["g_budget"]) == ["40%", "25%"]
    assert list(table["widths"]) == [os.path.join("g40%", "widths.yaml"), os.path.join("g25%", "widths.yaml")]
    assert (table["G MACs"] <= table["g_budget"].str.rstrip("%").astype(float) / 100 * full).all()
    assert (table["seconds"] > 0).all() and (table["rounds"] > 0).all()
    assert "| g_budget" in open(os.path.join(out, "family.md")).read()
    history25 = pd.read_csv(os.path.join(out, "g25%", "history.csv")).drop(columns="seconds")

    # A budget added later: the supernet is reused untouched (a smaller budget keeps its cap), the old searches
    # resume from their histories, the new one runs, and the table gets its row.
    assert main(["search", "--config", str(config), "--out", out, "--g-budget", "40%,25%,20%"]) == 0
    assert (os.stat(weights).st_mtime_ns, open(weights, "rb").read()) == before
    assert _supernet_files(out) == [os.path.join(out, "supernet", "supernet_state.pt")]
    assert pd.read_csv(os.path.join(out, "supernet", "supernet_log.csv"))["step"].max() == tiny["supernet_steps"]
    winner = yaml.safe_load(open(os.path.join(out, "g20%", "widths.yaml")))
    assert winner["generator"]["macs"] <= 0.20 * full
    # replayed, and its after-rounds rows scored again on the same supernet: the same scores
    pd.testing.assert_frame_equal(pd.read_csv(os.path.join(out, "g25%", "history.csv")).drop(columns="seconds"),
                                  history25)
    new_table = pd.read_csv(os.path.join(out, "family.csv"), dtype={"g_budget": str})
    assert list(new_table["g_budget"]) == ["40%", "25%", "20%"]
    assert list(new_table["seconds"][:2]) == list(table["seconds"])   # replayed only: the time of the work stays

    # One budget into a folder holding a family joins it (a larger budget: the supernet keeps the cap it was
    # trained with, and says so), and the earlier rows stay in the table.
    capsys.readouterr()
    assert main(["search", "--config", str(config), "--out", out, "--g-budget", "60%"]) == 0
    assert "reusing the supernet" in capsys.readouterr().out
    assert (os.stat(weights).st_mtime_ns, open(weights, "rb").read()) == before
    table = pd.read_csv(os.path.join(out, "family.csv"), dtype={"g_budget": str})
    assert list(table["g_budget"]) == ["60%", "40%", "25%", "20%"]
    assert not os.path.exists(os.path.join(out, "widths.yaml"))


@pytest.mark.slow
def test_family_pipeline_each_budget_in_its_folder_on_one_supernet(tiny, tmp_path):
    """``ganprune prune`` with two budgets: each budget's pipeline in its own folder, every pruned G a slice of
    the one supernet (not a copy per budget), a family table of the final metrics; a rerun skips everything."""
    from ganprune.models.checkpoint import load_generator
    from ganprune.pruning.physical import channel_ranking, prune
    out = str(tmp_path / "run")
    config = {**tiny, "g_budget": "40%,25%"}
    r = run_pipeline(config, out, progress=False)
    assert set(r["stages"].values()) == {"ran"} and len(r["stages"]) == 12
    assert _supernet_files(out) == [os.path.join(out, "search", "supernet", "supernet_state.pt")]
    shared = load_generator(arch="unet_64", ngf=8)
    shared.load_state_dict(torch.load(os.path.join(out, "search", "supernet", "supernet_G.pt"), weights_only=True))
    x = torch.zeros(1, 3, 64, 64)
    ranking = channel_ranking(load_generator(tiny["generator"], arch="unet_64", ngf=8), x)
    for folder in ("g40%", "g25%"):
        G = load_pruned(os.path.join(out, folder, "pruned_G.pt"))
        sliced = prune(shared, pruned_info(G).widths, x, ranking=ranking)
        for (name, a), (_, b) in zip(G.named_parameters(), sliced.named_parameters()):
            assert torch.equal(a, b), (folder, name)
        assert os.path.getsize(os.path.join(out, folder, "G.onnx")) > 0
        assert yaml.safe_load(open(os.path.join(out, folder, "config.yaml")))["g_budget"] == folder[1:]
    table = pd.read_csv(os.path.join(out, "family.csv"), dtype={"g_budget": str}).set_index("g_budget")
    assert list(table.index) == ["dense", "40%", "25%"]
    dense = table.loc["dense", "GMACs"]
    assert table.loc["40%", "GMACs"] <= 0.40 * dense * 1.0001 and table.loc["25%", "GMACs"] <= 0.25 * dense * 1.0001
    assert table.loc["25%", "ships"].startswith("g25%/") and (table.loc[["40%", "25%"], "seconds"] > 0).all()
    assert 5 < table.loc["25%", "PSNR"] < 60
    assert r["table"] is not None and os.path.isfile(os.path.join(out, "family.md"))
    again = run_pipeline(config, out, progress=False)
    assert set(again["stages"].values()) == {"skipped"}


def test_supernet_cap_is_for_the_largest_macs_budget_and_off_with_a_latency(tiny):
    from ganprune.models.checkpoint import load_generator
    from ganprune.pruning.space import SearchSpace
    from ganprune.search.setup import supernet_cap
    space = SearchSpace.from_model(load_generator(tiny["generator"], arch="unet_64", ngf=8), torch.zeros(1, 3, 64, 64),
                                   arch="unet_64")
    assert supernet_cap(space, "25%") == supernet_cap(space, 0.25) == pytest.approx(0.3)     # one budget: as before
    assert supernet_cap(space, ["10%", "25%", "20%"]) == pytest.approx(0.3)
    assert supernet_cap(space, ["25%", "0.9"]) == 1.0
    assert supernet_cap(space, ["25%", "4ms"]) is None
