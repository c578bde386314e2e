"""Policy-gradient agent: REINFORCE over per-group width choices, conditioned on the peer.

Policy: each prunable group picks one of its width choices independently. The choices are ordered, so
instead of a free categorical (one logit per choice, learnt separately from ~100 evaluations) each
group's distribution is a discretised Gaussian over the choice positions in [0, 1]: logits
``-(pos - mu_g)^2 / (2 sigma_g^2)``, with ``mu_g = 1.5 · sigmoid(m_g + W_g · x) - 0.25``. Two parameters
per group learn far faster, and what is learnt about one width carries to its neighbours; the bounded
centre keeps a group that settled at one end of its range from saturating (no gradient, no exploration).
``x`` summarises the peer's latest result: [peer present, its mean width as a fraction of the widest
seen per group, its feasibility, its score standardised over the peer scores seen so far], so the policy
can learn that its best widths depend on what the peer network is doing. ``m`` starts at the widest uniform scaling that fits the budget,
``sigma`` at ``init_sigma``, ``W`` at zero.

Proposals fit the budget: the policy is sampled up to ``max_tries`` times for a feasible draw (proposals
follow the policy restricted to the budget); failing that, the last draw is projected, one group a choice
down at a time (a step the policy prefers if any, else the one losing the least log-probability per MAC
saved). With ``fill`` on, a feasible draw then grows while the budget holds, the step the policy minds
least first. That assumes a wider network never scores worse (pruning less keeps it closer to the
teacher); turn ``fill`` off for a score where that does not hold.

Learning: reward = -score; advantage = (reward - baseline) / running std of rewards, clipped to ±3,
where the baseline is an exponential moving average (``baseline_decay``). Failed candidates (score inf)
get a reward one standard deviation below the worst seen. One Adam step per observation on
``-advantage · log π(executed choices | x) - entropy · H``; the executed (projected, filled) choices are
credited, which moves probability straight onto feasible widths near the budget.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ganprune.search.agent import Agent, register_agent
from ganprune.core.errors import UserError

N_FEATURES = 4
LOW, SPAN = 0.25, 1.5     # group centres live in (-0.25, 1.25): past either end of the choices, not far


class _Running:
    """Running mean and standard deviation (Welford)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x: float) -> None:
        self.n += 1
        d = x - self.mean
        self.mean += d / self.n
        self.m2 += d * (x - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0


@register_agent("rl")
class RLAgent(Agent):
    description = ("REINFORCE policy over per-group widths (ordinal Gaussian), conditioned on the peer's "
                   "latest result; proposals fit the budget")
    OPTIONS = {"max_tries": 20, "fill": True, "lr": 0.05, "entropy": 0.01, "baseline_decay": 0.5,
               "init_sigma": 0.3}

    def __init__(self, space, budget, seed=0, role="G", **options):
        super().__init__(space, budget, seed=seed, role=role, **options)
        o = self.options
        if not (o["max_tries"] >= 1 and o["lr"] > 0 and o["entropy"] >= 0 and 0 <= o["baseline_decay"] < 1
                and o["init_sigma"] > 0):
            raise UserError(f"agent 'rl': need max_tries ≥ 1, lr > 0, entropy ≥ 0, 0 ≤ baseline_decay < 1, "
                            f"init_sigma > 0; got {o}")
        start = self.fit_uniform()
        self.positions = [torch.linspace(0, 1, len(g.choices), dtype=torch.float64) for g in self.groups]
        centre = torch.tensor([g.choices.index(start[g.name]) / (len(g.choices) - 1) for g in self.groups],
                              dtype=torch.float64)
        self.mu = torch.logit((centre + LOW) / SPAN).detach().requires_grad_(True)
        self.log_sigma = torch.full((len(self.groups),), math.log(o["init_sigma"]), dtype=torch.float64,
                                    requires_grad=True)
        self.weight = torch.zeros(len(self.groups), N_FEATURES, dtype=torch.float64, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.mu, self.log_sigma, self.weight], lr=o["lr"])
        self.rewards = _Running()
        self.baseline: float | None = None
        self.peer_scores = _Running()
        self.peer_widest: dict[str, int] = {}
        self.worst = math.inf
        self._step: tuple[torch.Tensor, list[int]] | None = None

    def _features(self, peer) -> torch.Tensor:
        if peer is None:
            return torch.zeros(N_FEATURES, dtype=torch.float64)
        for g, w in peer.widths.items():
            self.peer_widest[g] = max(self.peer_widest.get(g, w), w, 1)
        frac = float(np.mean([w / self.peer_widest[g] for g, w in peer.widths.items()])) if peer.widths else 1.0
        if math.isfinite(peer.score):
            self.peer_scores.add(peer.score)
            std = self.peer_scores.std
            z = math.tanh((peer.score - self.peer_scores.mean) / std) if std > 0 else 0.0
        else:
            z = 1.0
        return torch.tensor([1.0, frac, float(peer.feasible), z], dtype=torch.float64)

    def _logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        mu = SPAN * torch.sigmoid(self.mu + self.weight @ x) - LOW
        var = torch.exp(2 * self.log_sigma)
        return [-(pos - mu[i]) ** 2 / (2 * var[i]) for i, pos in enumerate(self.positions)]

    def ask(self, peer):
        x = self._features(peer)
        with torch.no_grad():
            logp = [torch.log_softmax(lg, 0).numpy() for lg in self._logits(x)]
        probs = [np.exp(lp) for lp in logp]
        for _ in range(self.options["max_tries"]):
            picks = [int(self.rng.choice(len(p), p=p / p.sum())) for p in probs]
            widths = {**self.full, **{g.name: g.choices[k] for g, k in zip(self.groups, picks)}}
            if self.is_feasible(widths):
                break
        else:
            widths = self.shrink_until_feasible(widths, self._projection_order(logp))
        if self.options["fill"]:
            widths = self._fill(widths, logp)
        self._step = (x, [self.choices(g.name).index(widths[g.name]) for g in self.groups])
        return widths

    def _fill(self, widths, logp):
        """Grow groups while the budget holds, the step the policy minds least first."""
        index = {g.name: i for i, g in enumerate(self.groups)}

        def cost(name):
            lp, k = logp[index[name]], self.choices(name).index(widths[name])
            return float(lp[k] - lp[k + 1])
        while True:
            growable = [n for n in index if widths[n] < self.full[n] and self.is_feasible(self.step(widths, n, 1))]
            if not growable:
                return widths
            widths = self.step(widths, min(growable, key=cost), 1)

    def _projection_order(self, logp):
        index = {g.name: i for i, g in enumerate(self.groups)}

        def choose(widths, candidates):
            # the step down that loses the least log-probability per MAC saved; a step the policy
            # prefers (the lower choice is likelier) wins outright; ties go to the bigger saving
            def key(name):
                lp, k = logp[index[name]], self.choices(name).index(widths[name])
                cost = float(lp[k] - lp[k - 1])
                saved = self.cost(widths) - self.cost(self.step(widths, name, -1))
                return (cost > 0, cost / max(saved, 1) if cost > 0 else cost, -saved)
            return min(candidates, key=key)
        return choose

    def tell(self, feedback):
        x, picks = self._step
        self._step = None
        if not self.groups:
            return  # nothing to learn: every group is frozen
        if math.isfinite(feedback.score):
            reward = -float(feedback.score)
            self.rewards.add(reward)
        elif self.rewards.n:
            reward = self.worst - (self.rewards.std or 1.0)
        else:
            return  # nothing to compare a failure with yet
        self.worst = min(self.worst, reward)
        if self.baseline is None:
            self.baseline = reward
        advantage = (reward - self.baseline) / (self.rewards.std or 1.0)
        advantage = max(-3.0, min(3.0, advantage))
        decay = self.options["baseline_decay"]
        self.baseline = decay * self.baseline + (1 - decay) * reward
        if advantage == 0.0 and self.options["entropy"] == 0.0:
            return
        log_pi, entropy = 0.0, 0.0
        for lg, k in zip(self._logits(x), picks):
            log_probs = torch.log_softmax(lg, 0)
            log_pi = log_pi + log_probs[k]
            entropy = entropy - (log_probs.exp() * log_probs).sum()
        loss = -advantage * log_pi - self.options["entropy"] * entropy
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():  # spreads neither collapse (no exploration) nor flatten (no preference)
            self.log_sigma.clamp_(math.log(0.05), math.log(3.0))
