"""A complete, working agent to copy when writing your own.

    cp agents/template.py my_agent.py      # rename the class and the registered name
    ganprune agents --agent-file my_agent.py
    ganprune search --config my.yaml --g-agent my_agent --agent-file my_agent.py

What it does: proposes uniformly scaled widths (every group at the same fraction of its full width), the
widest that fit ``headroom`` × the budget, found by bisection on MACs without spending evaluations. If
the evaluation of a proposal fails (score inf), it retries 10% narrower. It is done once a proposal was
scored. That is "uniform pruning", the standard baseline for channel pruning.

The rules every agent follows (the base class enforces the first three):
  * ``ask(peer)`` returns a dict with one integer width per group of ``self.space``, each one of that
    group's ``choices``; the search loop evaluates it and calls ``tell(feedback)`` with the result.
  * ``peer`` is the other network's agent's latest ``Feedback`` (``None`` at the start).
  * ``Feedback.score`` is a loss: lower is better; ``math.inf`` means the evaluation failed.
    ``Feedback.feasible`` tells whether the widths fit the budget; over-budget proposals are allowed
    (they get scored) but only feasible ones can win.
  * Be deterministic given ``seed`` and the feedback: draw random numbers only from ``self.rng`` (a numpy
    Generator seeded per agent); never from ``random``, ``np.random`` or ``torch`` global state. A search
    is resumed by replaying its history into a freshly built agent, which must propose the same widths.
"""
from __future__ import annotations

import math

from ganprune.search.agent import Agent, register_agent
from ganprune.core.errors import UserError


@register_agent("template")            # the name users give to --g-agent / --d-agent; must be unique
class TemplateAgent(Agent):
    # One line, shown by `ganprune agents`.
    description = "uniform width scaling to fit the budget (copy agents/template.py to write your own agent)"
    # Every option with its default; the default's type is the option's type. A misspelt option given by
    # the user is rejected by the base class with a one-line error naming the known ones.
    OPTIONS = {"headroom": 1.0}

    def __init__(self, space, budget, seed=0, role="G", **options):
        super().__init__(space, budget, seed=seed, role=role, **options)   # sets self.options, rng, …
        if not 0 < self.options["headroom"] <= 1:
            raise UserError(f"agent 'template': headroom must be in (0, 1], got {self.options['headroom']}")
        self.target = self.limit * self.options["headroom"]
        self.fraction = self._widest_fraction(1.0)
        self.scored = False

    def _widest_fraction(self, upper: float) -> float:
        """Largest fraction f ≤ upper with cost(uniform(f)) ≤ target, by bisection (cost grows with f)."""
        if self.cost(self.space.uniform(upper)) <= self.target:
            return upper
        lo, hi = 0.0, upper
        for _ in range(30):
            mid = (lo + hi) / 2
            if self.cost(self.space.uniform(mid)) <= self.target:
                lo = mid
            else:
                hi = mid
        return lo

    def ask(self, peer):
        widths = self.space.uniform(self.fraction)
        if not self.is_feasible(widths):   # rounding to the choices can overshoot: fall back to a safe point
            widths = self.shrink_until_feasible(widths, lambda w, names: max(names, key=lambda n: w[n]))
        return widths

    def tell(self, feedback):
        # The base class already recorded the feedback (self.history, self.best()); here we only decide
        # what to do next.
        if math.isfinite(feedback.score):
            self.scored = True
        else:
            self.fraction *= 0.9

    def done(self):
        return self.scored
