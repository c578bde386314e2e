"""Default runs end with a winner: for every built-in generator at full size (ngf 64) and G budgets of
25% and 10%, greedy agents given no rounds (sized from the space) reach both budgets within the rounds
they are given. The nets are real; the scores come from a cheap stand-in evaluator (widths only), which
is all the agents' path to the budget depends on."""
import pytest
import torch

from ganprune.search.agent import get_agent
from ganprune.search.budget import Budget
from ganprune.models.checkpoint import load_discriminator, load_generator
from ganprune.search.loop import CollaborativeSearch
from ganprune.search.setup import default_rounds
from ganprune.pruning.space import SearchSpace

SIZES = {"unet_64": 64, "unet_128": 128, "unet_256": 256, "resnet_6blocks": 64, "resnet_9blocks": 64}


class WidthsOnly:
    """Scores a pair by how much of each group it removed (a smooth, deterministic stand-in)."""

    def __init__(self, g_space, d_space):
        self.g_space, self.d_space, self.evaluations = g_space, d_space, 0

    def _loss(self, space, widths):
        full = space.full_widths()
        return sum((1 - widths[g] / full[g]) ** 2 * (1 + i % 3) for i, g in enumerate(sorted(full)))

    def score_pair(self, g_widths, d_widths):
        self.evaluations += 1
        g, d = self._loss(self.g_space, g_widths), self._loss(self.d_space, d_widths)
        return {"density": g, "l1": 0.0, "psnr_pooled": 30.0, "balance": 0.0, "d_fidelity": d, "score_g": g,
                "score_d": d, "score": g + d, "g_macs": int(self.g_space.macs(g_widths)),
                "d_macs": int(self.d_space.macs(d_widths)), "seconds": 0.0}


@pytest.fixture(scope="module")
def d_space():
    D = load_discriminator(None, arch="basic", ndf=64, input_nc=6).eval()
    return SearchSpace.from_model(D, torch.zeros(1, 6, 64, 64), arch="basic")


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(SIZES))
def test_default_rounds_reach_25_and_10_percent(arch, d_space, one_thread):
    G = load_generator(None, arch=arch, ngf=64).eval()
    g_space = SearchSpace.from_model(G, torch.zeros(1, 3, SIZES[arch], SIZES[arch]), arch=arch)
    for fraction in (0.25, 0.10):
        g_budget = Budget(g_space, fraction * g_space.macs(g_space.full_widths()))
        d_budget = Budget(d_space, 0.5 * d_space.macs(d_space.full_widths()))
        g = get_agent("greedy")(g_space, g_budget, seed=0, role="G")
        d = get_agent("greedy")(d_space, d_budget, seed=1, role="D")
        rounds = default_rounds(g, d)
        result = CollaborativeSearch(WidthsOnly(g_space, d_space), g, d, g_budget, d_budget, rounds,
                                     progress=False, fill=False, uniform=False).run()
        assert result.best is not None, f"{arch} at {fraction:.0%}: no winner in {rounds} rounds"
        assert result.best["g_macs"] <= g_budget.limit and result.best["d_macs"] <= d_budget.limit
        assert len(result.history) <= rounds      # reached within the sized rounds, no extension needed


def test_search_goes_on_past_rounds_while_nothing_fits(d_space):
    """Given too few rounds by default sizing, the loop runs on (up to max_rounds) until a pair fits."""
    G = load_generator(None, arch="unet_64", ngf=16).eval()
    g_space = SearchSpace.from_model(G, torch.zeros(1, 3, 64, 64), arch="unet_64")
    g_budget = Budget(g_space, 0.25 * g_space.macs(g_space.full_widths()))
    d_budget = Budget(d_space, 0.5 * d_space.macs(d_space.full_widths()))

    def run(max_rounds):
        g = get_agent("greedy")(g_space, g_budget, seed=0, role="G")
        d = get_agent("greedy")(d_space, d_budget, seed=1, role="D")
        return CollaborativeSearch(WidthsOnly(g_space, d_space), g, d, g_budget, d_budget, 3, progress=False,
                                   fill=False, uniform=False, max_rounds=max_rounds).run()
    assert run(None).best is None and len(run(None).history) == 3
    extended = run(200)
    assert extended.best is not None and 3 < len(extended.history) <= 200
    assert extended.history["feasible"].iloc[-1] == True  # noqa: E712  (it stopped at the first fitting pair)
