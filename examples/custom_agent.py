"""A custom pruning agent in one file: random local search around the uniform fit.

Use it from the command line without installing anything:

    ganprune agents --agent-file examples/custom_agent.py
    ganprune search --teacher runs/teacher --dataroot datasets/facades --out runs/search \
        --g-agent local_search --agent-file examples/custom_agent.py

It starts from the widest uniformly scaled widths that fit the budget, then each proposal moves one
random group a choice up and shrinks others (the narrowest-relative first) until the budget holds
again. A move that scores better becomes the new centre; after ``patience`` failed moves in a row it is
done. Random numbers come only from ``self.rng`` so a resumed search replays it exactly.
"""
from __future__ import annotations

import math

from ganprune.search.agent import Agent, register_agent


@register_agent("local_search")
class LocalSearchAgent(Agent):
    description = "random grow-one/shrink-others moves around the uniform fit; keeps improvements (example)"
    OPTIONS = {"patience": 8}

    def __init__(self, space, budget, seed=0, role="G", **options):
        super().__init__(space, budget, seed=seed, role=role, **options)
        self.centre = self.fit_uniform()
        self.centre_score = math.inf
        self.failures = 0

    def ask(self, peer):
        if not math.isfinite(self.centre_score):   # score the centre itself first
            return dict(self.centre)
        growable = [g.name for g in self.groups if self.centre[g.name] < self.full[g.name]]
        if not growable:
            return dict(self.centre)
        grow = growable[int(self.rng.integers(len(growable)))]
        widths = self.step(self.centre, grow, +1)
        # Shrink the group that keeps the largest share of its full width, never the one just grown.
        return self.shrink_until_feasible(widths, lambda w, names: max(
            [n for n in names if n != grow] or names, key=lambda n: w[n] / self.full[n]))

    def tell(self, feedback):
        if feedback.feasible and feedback.score < self.centre_score:
            self.centre, self.centre_score, self.failures = dict(feedback.widths), feedback.score, 0
        else:
            self.failures += 1

    def done(self):
        return self.failures >= self.options["patience"]
