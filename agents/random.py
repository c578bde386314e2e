"""The baseline: widths drawn uniformly from the feasible ones.

Each group's choice is drawn uniformly and the draw is kept if it fits the budget and was not proposed
before (rejection sampling, so accepted draws are uniform over the untried feasible widths). After
``max_tries`` rejections the last draw is shrunk, one random group a choice at a time, until it fits.
The peer's feedback is ignored: that is what makes it a baseline.
"""
from __future__ import annotations

from ganprune.search.agent import Agent, register_agent
from ganprune.core.errors import UserError


@register_agent("random")
class RandomAgent(Agent):
    description = "uniform random feasible widths (rejection sampling, then random shrinking); the baseline"
    OPTIONS = {"max_tries": 100}

    def __init__(self, space, budget, seed=0, role="G", **options):
        super().__init__(space, budget, seed=seed, role=role, **options)
        if self.options["max_tries"] < 1:
            raise UserError(f"agent 'random': max_tries must be ≥ 1, got {self.options['max_tries']}")
        self.seen: set[tuple] = set()

    def _draw(self) -> dict[str, int]:
        return {**self.full, **{g.name: g.choices[int(self.rng.integers(len(g.choices)))] for g in self.groups}}

    def ask(self, peer):
        for _ in range(self.options["max_tries"]):
            widths = self._draw()
            key = tuple(sorted(widths.items()))
            if key not in self.seen and self.is_feasible(widths):
                break
        else:
            widths = self.shrink_until_feasible(widths, lambda w, names: names[int(self.rng.integers(len(names)))])
        self.seen.add(tuple(sorted(widths.items())))
        return widths
