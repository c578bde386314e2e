"""Evaluator and collaborative search: split guard, exact teacher score, determinism, resume, bad plugins."""
import json
import math

import pandas as pd
import pytest
import torch

import ganprune
from ganprune.search.agent import Agent, get_agent, register_agent
from ganprune.core.errors import UserError
from ganprune.scoring.candidates import calibration_batches, guard_search_split, item_batches
from ganprune.search.setup import build_evaluator
from ganprune.search.budget import resolve_macs
from ganprune.search.loop import pareto_front, search
from ganprune.search.budget import fill_budget


def _batches(n=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"A": torch.rand(4, 3, size, size, generator=g) * 2 - 1,
             "B": torch.rand(4, 3, size, size, generator=g) * 2 - 1} for _ in range(n)]


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    G = ganprune.load_generator(None, arch="unet_64", ngf=8).eval()
    D = ganprune.load_discriminator(None, arch="basic", ndf=8).eval()
    return G, D


@pytest.fixture(scope="module")
def evaluator(pair):
    G, D = pair
    return build_evaluator(G, D, _batches(), g_spec={"arch": "unet_64"}, d_spec={"arch": "basic"}, m=4)


def _agents(evaluator, name="random", g_budget=0.3, d_budget=0.5, seed=0):
    g_max = resolve_macs(g_budget, evaluator.g_space.macs(evaluator.g_space.full_widths()))
    d_max = resolve_macs(d_budget, evaluator.d_space.macs(evaluator.d_space.full_widths()))
    g = get_agent(name)(evaluator.g_space, g_max, seed=seed, role="G")
    d = get_agent(name)(evaluator.d_space, d_max, seed=seed + 1, role="D")
    return g, d, g_max, d_max


def test_search_never_sees_the_evaluation_split(tmp_path, pair):
    for phase in ("val", "test", "testA"):
        with pytest.raises(UserError, match="evaluation split"):
            guard_search_split(phase)
        with pytest.raises(UserError, match="evaluation split"):
            calibration_batches(tmp_path, phase=phase)
    batches = [dict(b, phase="val") for b in _batches(1)]
    with pytest.raises(UserError, match="evaluation split"):
        build_evaluator(*pair, batches, m=2)


def test_item_batches_keep_order_and_phase(pair):
    items = [{"A": torch.full((3, 64, 64), float(i)), "B": torch.full((3, 64, 64), -float(i))} for i in range(5)]
    batches = item_batches(items, 2, "val")
    assert [len(b["A"]) for b in batches] == [2, 2, 1] and {b["phase"] for b in batches} == {"val"}
    assert [float(a[0, 0, 0]) for b in batches for a in b["A"]] == [0, 1, 2, 3, 4]
    assert torch.equal(batches[1]["B"][1], items[3]["B"])
    with pytest.raises(UserError, match="evaluation split"):
        build_evaluator(*pair, batches, m=2)


def test_full_widths_score_zero_and_pruning_costs(pair):
    G, D = pair
    ev = build_evaluator(G, D, _batches(), m=4, recalibrate_bn=False)
    full = ev.score_pair(ev.g_space.full_widths(), ev.d_space.full_widths())
    assert full["density"] == pytest.approx(0, abs=1e-6)
    assert full["l1"] == pytest.approx(0, abs=1e-6) and full["balance"] == pytest.approx(0, abs=1e-6)
    assert full["d_fidelity"] == pytest.approx(0, abs=1e-6)
    small = ev.score_pair(ev.g_space.uniform(0.25), ev.d_space.uniform(0.25))
    assert small["density"] > 1e-4 and small["l1"] > 1e-3 and small["d_fidelity"] > 0
    assert small["g_macs"] < 0.3 * full["g_macs"] and small["d_macs"] < 0.3 * full["d_macs"]
    assert all(math.isfinite(v) for v in small.values())


def test_teacher_is_not_modified_by_evaluation(pair, evaluator):
    G, _ = pair
    before = {k: v.clone() for k, v in G.state_dict().items()}
    evaluator.score_pair(evaluator.g_space.uniform(0.5), evaluator.d_space.uniform(0.5))
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())


def test_search_finds_feasible_pair_deterministically(evaluator):
    runs = []
    for _ in range(2):
        g, d, g_max, d_max = _agents(evaluator)
        result = search(evaluator, g, d, g_max, d_max, rounds=5, progress=False, fill=False)
        runs.append(result)
    h0, h1 = runs[0].history, runs[1].history
    assert list(h0["g_widths"]) == list(h1["g_widths"]) and list(h0["score"]) == list(h1["score"])
    best = runs[0].best
    assert best is not None and best["g_macs"] <= g_max and best["d_macs"] <= d_max
    feasible = h0[h0["feasible"] == True]  # noqa: E712
    assert best["score"] == feasible["score"].min()
    front = pareto_front(h0)
    assert len(front) >= 1 and front["score_g"].is_monotonic_decreasing


def test_fill_grows_the_winner_into_the_unused_budget(evaluator):
    space = evaluator.g_space
    full = space.macs(space.full_widths())
    small = {g.name: g.choices[0] for g in space.groups}
    filled = fill_budget(space, small, 0.6 * full)
    assert space.macs(small) < space.macs(filled) <= 0.6 * full
    for g in space.groups:   # nothing can grow one more choice and still fit
        i = g.choices.index(filled[g.name])
        assert i + 1 == len(g.choices) or space.macs({**filled, g.name: g.choices[i + 1]}) > 0.6 * full
    assert fill_budget(space, filled, 0.6 * full) == filled

    g, d, g_max, d_max = _agents(evaluator)
    plain = search(evaluator, g, d, g_max, d_max, rounds=5, progress=False, fill=False, uniform=False)
    g, d, g_max, d_max = _agents(evaluator)
    result = search(evaluator, g, d, g_max, d_max, rounds=5, progress=False, uniform=False)
    h = result.history
    assert list(h["phase"].iloc[:5]) == ["search"] * 5 and list(h["g_widths"].iloc[:5]) == list(plain.history["g_widths"])
    assert len(h) == 6 and h["phase"].iloc[5] == "fill"   # the winner left budget unused: one more scored row
    fill = h.iloc[5]
    assert json.loads(fill["g_widths"]) == fill_budget(evaluator.g_space, plain.best["g_widths"], g_max)
    assert fill["g_macs"] >= plain.best["g_macs"] and fill["g_macs"] <= g_max and fill["d_macs"] <= d_max
    # the fill row is the result only when it scores at least as well as the winner it grew from
    expected = 5 if fill["score"] <= plain.best["score"] else plain.best["round"]
    assert result.best["round"] == expected and result.best["score"] <= plain.best["score"]


class _Rescored:
    """The test evaluator with one candidate's score changed by ``rescore(g_widths, row)``."""

    def __init__(self, inner, rescore):
        self.inner, self.g_space, self.d_space, self.rescore = inner, inner.g_space, inner.d_space, rescore
        self.evaluations = 0

    def score_pair(self, g_widths, d_widths):
        r = dict(self.inner.score_pair(g_widths, d_widths))
        self.rescore(g_widths, r)
        return r


def test_fill_never_replaces_a_better_winner(evaluator):
    """A fill scoring worse than the best candidate stays in the history but is not the result."""
    def worse(g_widths, r):
        if g_widths == fill_budget(evaluator.g_space, plain.best["g_widths"], g_max):
            r["score"] += 10.0      # the grown pair scores far worse
    g, d, g_max, d_max = _agents(evaluator)
    plain = search(evaluator, g, d, g_max, d_max, rounds=5, progress=False, fill=False, uniform=False)
    g, d, g_max, d_max = _agents(evaluator)
    result = search(_Rescored(evaluator, worse), g, d, g_max, d_max, rounds=5, progress=False, uniform=False)
    assert result.history["phase"].iloc[-1] == "fill"
    assert result.best["round"] == plain.best["round"] and result.best["score"] == plain.best["score"]


@pytest.mark.parametrize("uniform_offset", [-10.0, 0.0, 10.0])
def test_uniform_pruning_is_scored_and_wins_only_when_strictly_better(evaluator, uniform_offset):
    """After the rounds (and the fill) uniform pruning at the same budgets is scored as one more row; it is
    the result only when it scores strictly better than the search's own winner."""
    from ganprune.search.budget import uniform_widths

    def shifted(g_widths, r):
        if g_widths == uniform_widths(evaluator.g_space, g_max):
            r["score"] = baseline + uniform_offset
    g, d, g_max, d_max = _agents(evaluator)
    plain = search(evaluator, g, d, g_max, d_max, rounds=5, progress=False, uniform=False)
    baseline = plain.best["score"]
    g, d, g_max, d_max = _agents(evaluator)
    result = search(_Rescored(evaluator, shifted), g, d, g_max, d_max, rounds=5, progress=False)
    h = result.history
    assert len(h) == len(plain.history) + 1 and h["phase"].iloc[-1] == "uniform"
    u = h.iloc[-1]
    gw = json.loads(u["g_widths"])
    space = evaluator.g_space
    assert gw == uniform_widths(space, g_max) and u["g_macs"] <= g_max and u["d_macs"] <= d_max
    assert fill_budget(space, gw, g_max) == gw            # grown into the budget like every searched winner
    if uniform_offset < 0:
        assert result.best["phase"] == "uniform" and result.best["g_widths"] == gw
    else:                                                 # a tie keeps the search's own pick
        assert result.best["round"] == plain.best["round"] and result.best["score"] == plain.best["score"]


def test_resume_after_interruption_reproduces_the_straight_run(tmp_path, evaluator):
    g, d, g_max, d_max = _agents(evaluator, seed=3)
    straight = search(evaluator, g, d, g_max, d_max, rounds=6, progress=False).history
    g, d, _, _ = _agents(evaluator, seed=3)
    search(evaluator, g, d, g_max, d_max, rounds=3, out_dir=tmp_path, progress=False)
    assert list(pd.read_csv(tmp_path / "history.csv")["phase"].iloc[:3]) == ["search"] * 3   # + a fill row
    old = pd.read_csv(tmp_path / "history.csv")   # as older versions named psnr_pooled: resumes alike
    old.rename(columns={"psnr_pooled": "psnr_teacher"}).to_csv(tmp_path / "history.csv", index=False)
    g, d, _, _ = _agents(evaluator, seed=3)  # fresh agents, as after a kill
    resumed = search(evaluator, g, d, g_max, d_max, rounds=6, out_dir=tmp_path, progress=False).history
    assert list(resumed["g_widths"]) == list(straight["g_widths"])
    assert list(resumed["d_widths"]) == list(straight["d_widths"])
    assert resumed["score"].to_numpy() == pytest.approx(straight["score"].to_numpy())
    assert (tmp_path / "widths.yaml").exists()
    g, d, _, _ = _agents(evaluator, seed=4)  # a different seed cannot silently continue that history
    with pytest.raises(UserError, match="does not match"):
        search(evaluator, g, d, g_max, d_max, rounds=7, out_dir=tmp_path, progress=False)


@register_agent("test-flaky")
class FlakyAgent(Agent):
    """Fails on its third proposal: raises, or returns an unknown group (option ``mode``)."""
    description = "test agent that breaks on purpose"
    OPTIONS = {"mode": "raise"}

    def ask(self, peer):
        if len(self.history) == 2:
            if self.options["mode"] == "raise":
                raise RuntimeError("plugin bug")
            return {"no_such_group": 1}
        return self.space.uniform(0.25)


@pytest.mark.parametrize("mode", ["raise", "invalid"])
def test_broken_plugin_agent_stops_cleanly_or_is_skipped(tmp_path, evaluator, mode):
    g_max = evaluator.g_space.macs(evaluator.g_space.full_widths())
    d = get_agent("random")(evaluator.d_space, 1e18, seed=1, role="D")
    g = get_agent("test-flaky")(evaluator.g_space, g_max, role="G", mode=mode)
    with pytest.raises(UserError, match="search stopped at round 2"):
        search(evaluator, g, d, g_max, 1e18, rounds=5, out_dir=tmp_path / "stop", progress=False)
    history = pd.read_csv(tmp_path / "stop" / "history.csv")
    assert len(history) == 3 and "G-agent" in history["error"].iloc[2]
    assert history["error"].iloc[:2].isna().all()
    d = get_agent("random")(evaluator.d_space, 1e18, seed=1, role="D")
    g = get_agent("test-flaky")(evaluator.g_space, g_max, role="G", mode=mode)
    result = search(evaluator, g, d, g_max, 1e18, rounds=5, on_agent_error="skip", progress=False)
    assert (result.history["phase"] == "search").sum() == 5 and result.history["error"].astype(bool).sum() >= 1
    assert result.best is not None and json.dumps(result.best["g_widths"]) != "null"


def test_budget_parsing():
    assert resolve_macs("25%", 1000) == 250 and resolve_macs(0.5, 1000) == 500
    assert resolve_macs("3e6", 10) == 3e6
    for bad in ("abc", 0, -1):
        with pytest.raises(UserError):
            resolve_macs(bad, 10)


def test_evaluator_takes_a_pair_whose_input_and_output_channels_differ():
    from ganprune.models.checkpoint import load_discriminator, load_generator
    from ganprune.search.setup import build_evaluator
    G = load_generator(arch="unet_64", ngf=8, input_nc=1, output_nc=3)
    D = load_discriminator(ndf=8, input_nc=4)   # conditional D sees 1 input + 3 output channels
    batches = [{"A": torch.randn(2, 1, 64, 64), "B": torch.randn(2, 3, 64, 64), "phase": "train"}]
    ev = build_evaluator(G, D, batches, m=2)
    assert list(ev.d_example.shape) == [1, 4, 64, 64]
    m = ev.score_pair(ev.g_space.uniform(0.5), ev.d_space.uniform(0.5))
    assert math.isfinite(m["score"]) and 0 < m["d_macs"] < ev.d_space.macs(ev.d_space.full_widths())
