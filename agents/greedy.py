"""NetAdapt-style greedy agent: shrink where it hurts least per MAC saved, then refine under the budget.

(With a latency budget read "predicted ms" wherever this says MACs: the agent only sees ``self.cost``.)

Shrink phase (from the full widths): the MACs gap to the budget is spread over ``rounds`` rounds. Each
round, every prunable group (or a random subset of ``max_trials_per_round``; 0 = all) is tried alone,
shrunk by the fewest choices that save this round's share of the gap; the trial with the smallest score
increase per MAC saved is committed. If that one cannot save the round's share (a small group saves too
little even at its smallest choice), the next-best trials join it until the share is saved, and the
combination is evaluated at the start of the next round; since each joined trial shrank its group as far
as the share asked, the joined groups then grow back (least attractive first) while the share stays
saved, so a combination does not overshoot the budget by whole groups. So the phase takes about ``rounds`` × (groups
+ 1) evaluations. A round whose trials reach the budget commits its best-scoring feasible one, which
ends the phase. Over-budget trials need real scores, as the search loop provides; trials that failed
(score inf) are skipped, and if all failed the largest saving is committed, so the phase always reaches
the budget.

Refine phase: swap moves from the committed widths: grow one group a choice and shrink another just
enough to stay within the budget (or only grow, when that fits). Moves are ordered by the sensitivities
measured while shrinking (grow the group whose shrinking cost most per MAC, shrink the one that cost
least); an improving move is kept; the agent is done after ``patience`` moves in a row fail (0 = twice
the number of prunable groups) or when no untried move is left. ``refine: false`` stops at the budget.

Start (``start``): ``full`` begins the shrink phase from the teacher's widths, as NetAdapt does; ``uniform``
begins inside the budget, at the widest uniform widths that fit (what uniform pruning would ship), measures
each group's sensitivity by shrinking it one choice (each such trial is itself a candidate within the
budget), then refines by swaps as above. Why: on every teacher measured, uniform widths tied the searched
ones after fine-tuning, and a shrink from full spends most rounds outside the budget (docs/benchmarks.md,
frontier), so the search starts from the baseline it has to beat and only moves away when the score says so.

Peer feedback: with a joint evaluator a candidate's score shifts when the peer network changes, so the
reference score (the committed widths' score) goes stale. With ``remeasure`` on, a round starts by
re-evaluating the committed widths whenever the peer's widths differ from those the reference was
measured with, so the round's trials are compared against a current reference.
"""
from __future__ import annotations

import math

from ganprune.search.agent import Agent, Feedback, register_agent
from ganprune.core.errors import UserError


@register_agent("greedy")
class GreedyAgent(Agent):
    description = ("NetAdapt-style: shrink the group costing least score per MAC saved until within budget, "
                   "then refine by swaps")
    OPTIONS = {"rounds": 2, "max_trials_per_round": 0, "refine": True, "patience": 0, "remeasure": True,
               "start": "full"}

    def __init__(self, space, budget, seed=0, role="G", **options):
        super().__init__(space, budget, seed=seed, role=role, **options)
        o = self.options
        if o["rounds"] < 1 or o["max_trials_per_round"] < 0 or o["patience"] < 0:
            raise UserError(f"agent 'greedy': rounds must be ≥ 1 and max_trials_per_round, patience ≥ 0 "
                            f"(0 = all groups / 2 × groups), got {o}")
        if o["start"] not in ("full", "uniform"):
            raise UserError(f"agent 'greedy': start must be 'full' or 'uniform', got {o['start']!r}")
        self.peer: Feedback | None = None
        self.sensitivity: dict[str, float] = {}   # group → latest score increase per MAC saved
        self.current: dict[str, int] = dict(self.full)
        self._plan = self._search()
        self._next = next(self._plan)
        self._finished = False

    # The search is written as a generator: it yields widths and receives their Feedback. It is advanced
    # in tell(), so done() is known right after the last result; ask() hands out the prepared proposal.
    def ask(self, peer):
        self.peer = peer
        return dict(self.current if self._finished else self._next)

    def tell(self, feedback):
        if self._finished:
            return
        try:
            self._next = self._plan.send(feedback)
        except StopIteration:
            self._finished = True

    def done(self):
        return self._finished

    def rounds_hint(self):
        """Shrink: ``rounds`` × (groups + 1) trials plus reference re-measurements; refine: ``patience`` moves."""
        n = len(self.groups)
        shrink = (self.options["rounds"] + 1) * (n + 2) + 2 if self.options["start"] == "full" else n + 2
        return shrink + ((self.options["patience"] or 2 * n) if self.options["refine"] else 0)

    def _peer_key(self):
        return None if self.peer is None else tuple(sorted(self.peer.widths.items()))

    def _search(self):
        if self.options["start"] == "uniform":
            yield from self._from_uniform()
            return
        fb = yield dict(self.current)
        ref, ref_peer = fb.score, self._peer_key()
        left = self.options["rounds"]
        stale = False   # the current widths combine several trials and were never evaluated
        while not self.is_feasible(self.current):
            if stale or (self.options["remeasure"] and self._peer_key() != ref_peer):
                fb = yield dict(self.current)
                ref, ref_peer, stale = fb.score, self._peer_key(), False
            target = (self.cost(self.current) - self.limit) / max(left, 1)
            left -= 1
            trials = []
            for group in self._trial_groups():
                widths = self._shrink_by(self.current, group, target)
                fb = yield widths
                trials.append((group, widths, fb.score, self._peer_key()))
            ref, ref_peer, stale = self._commit(trials, ref, ref_peer, target)
        if stale or (self.options["refine"] and self.options["remeasure"] and self._peer_key() != ref_peer):
            fb = yield dict(self.current)
            ref = fb.score
        if self.options["refine"]:
            yield from self._refine(ref)

    def _from_uniform(self):
        """Start at the widest uniform widths within the budget, probe each group one choice narrower (its
        sensitivity), keep the best probe if it beats the start, then refine."""
        self.current = self.fit_uniform()
        fb = yield dict(self.current)
        ref, base = fb.score, self.cost(self.current)
        best = None
        for group in self._trial_groups():
            widths = self.step(self.current, group, -1)
            fb = yield widths
            saved = base - self.cost(widths)
            if math.isfinite(fb.score) and math.isfinite(ref) and saved > 0:
                self.sensitivity[group] = (fb.score - ref) / saved
            if fb.feasible and math.isfinite(fb.score) and (best is None or fb.score < best[1]):
                best = (widths, fb.score)
        if best is not None and (not math.isfinite(ref) or best[1] < ref):
            self.current, ref = dict(best[0]), best[1]
        if self.options["refine"]:
            yield from self._refine(ref)

    def _trial_groups(self) -> list[str]:
        names = [g.name for g in self.groups if self.current[g.name] > self.smallest[g.name]]
        k = self.options["max_trials_per_round"]
        if k and len(names) > k:
            picked = set(self.rng.choice(len(names), size=k, replace=False).tolist())
            names = [n for i, n in enumerate(names) if i in picked]
        return names

    def _shrink_by(self, widths, group, target) -> dict[str, int]:
        """Shrink ``group`` by the fewest choices that save ``target`` MACs (to its smallest if it cannot)."""
        base = self.cost(widths)
        out = self.step(widths, group, -1)
        while base - self.cost(out) < target and out[group] > self.smallest[group]:
            out = self.step(out, group, -1)
        return out

    def _commit(self, trials, ref, ref_peer, target):
        """Move ``self.current`` on; returns the new reference score, its peer, and whether it is stale."""
        base = self.cost(self.current)
        for group, widths, score, _ in trials:
            saved = base - self.cost(widths)
            if math.isfinite(score) and math.isfinite(ref) and saved > 0:
                self.sensitivity[group] = (score - ref) / saved
        ok = [t for t in trials if math.isfinite(t[2])]
        fits = [t for t in ok if self.is_feasible(t[1])]
        if fits or not ok:
            pick = min(fits, key=lambda t: t[2]) if fits else max(trials, key=lambda t: base - self.cost(t[1]))
            self.current = dict(pick[1])
            return pick[2], pick[3], False
        # least score increase per MAC saved first; when one group cannot save this round's share, the
        # next-best shrinks join it until the share is saved (NetAdapt's one-layer step stalls otherwise)
        ranked = sorted(ok, key=lambda t: ((t[2] - ref) if math.isfinite(ref) else t[2]) / (base - self.cost(t[1])))
        combined = dict(self.current)

        def enough(widths):
            return base - self.cost(widths) >= target or self.is_feasible(widths)

        for n, (group, widths, score, peer) in enumerate(ranked, 1):
            combined[group] = widths[group]
            if enough(combined):
                break
        if enough(combined):   # each joined trial shrank as far as it could alone: give back the excess,
            for group, *_ in reversed(ranked[:n]):   # least attractive group first
                while combined[group] < self.current[group] and enough(grown := self.step(combined, group, 1)):
                    combined = grown
        self.current = combined
        if n == 1 and combined == ranked[0][1]:
            return score, peer, False
        return ref, ref_peer, True

    def _moves(self):
        """Candidate widths around ``self.current``, most promising first."""
        known = sorted(self.sensitivity.values())
        default = known[len(known) // 2] if known else 0.0
        sens = {g.name: self.sensitivity.get(g.name, default) for g in self.groups}
        growable = sorted((g for g in sens if self.current[g] < self.full[g]), key=lambda g: -sens[g])
        for g in growable:
            grown = self.step(self.current, g, 1)
            if self.is_feasible(grown):
                yield grown
        pairs = sorted(((i, j) for i in growable for j in sens if j != i and self.current[j] > self.smallest[j]),
                       key=lambda p: sens[p[1]] - sens[p[0]])
        for i, j in pairs:
            widths = self.step(self.current, i, 1)
            while not self.is_feasible(widths) and widths[j] > self.smallest[j]:
                widths = self.step(widths, j, -1)
            if self.is_feasible(widths):
                yield widths

    def _refine(self, ref):
        patience = self.options["patience"] or 2 * len(self.groups)
        tried = {tuple(sorted(self.current.items()))}
        fails = 0
        while fails < patience:
            move = next((m for m in self._moves() if tuple(sorted(m.items())) not in tried), None)
            if move is None:
                return
            tried.add(tuple(sorted(move.items())))
            fb = yield move
            if fb.feasible and math.isfinite(fb.score) and (not math.isfinite(ref) or fb.score < ref):
                self.current, ref, fails = dict(move), fb.score, 0
            else:
                fails += 1
