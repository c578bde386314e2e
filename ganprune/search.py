"""The collaborative search: a G-agent and a D-agent take turns, each seeing its peer's latest result.

Each round the G-agent proposes with the D-agent's last feedback as its peer, the D-agent with the
G-agent's, and the evaluator scores the pair once. Only pairs inside both budgets can win. Every round is
appended to a history CSV as it happens; a killed search resumes by *replaying* that history into fresh
agents (they are deterministic functions of seed and feedback) and carries on where it stopped.

After the last round the winner gives back the budget it leaves unused (``fill``): agents shrink in
whole width choices and usually stop well under the budget (19% of a 25% budget is typical), and the
objective, measured with inherited weights before any fine-tuning, barely tells the two apart — but
fine-tuning uses the capacity (measured: +0.9 dB PSNR to the teacher after fine-tuning at 25% vs 19%
G MACs). The filled pair is scored once more and recorded as a ``fill`` row; it is the result.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass

import pandas as pd
from tqdm.auto import tqdm

from ganprune.agent import Feedback
from ganprune.budget import Budget
from ganprune.errors import UserError
from ganprune.io import atomic_write_text, atomic_write_yaml

HISTORY_COLUMNS = ["round", "phase", "g_widths", "d_widths", "g_macs", "d_macs", "g_ms", "d_ms", "g_feasible", "d_feasible", "feasible",
                   "density", "l1", "psnr_teacher", "balance", "d_fidelity", "score_g", "score_d", "score", "seconds", "error"]


def fill_budget(space, widths: dict[str, int], budget) -> dict[str, int]:
    """``widths`` grown into ``budget`` (a ``Budget`` or MACs): one choice at a time, always the group
    furthest below its full width (relative; ties: the earlier group), while it fits. Deterministic."""
    budget = as_budget(budget, space)
    widths = dict(widths)
    full = space.full_widths()
    while True:
        grown = []
        for g in space.groups:
            i = g.choices.index(widths[g.name])
            if i + 1 < len(g.choices):
                trial = {**widths, g.name: g.choices[i + 1]}
                if budget.fits(trial):
                    grown.append((widths[g.name] / full[g.name], len(grown), trial))
        if not grown:
            return widths
        widths = min(grown)[2]


def as_budget(budget, space) -> Budget:
    """A ``Budget`` as is; a number as a MACs limit on ``space``."""
    return budget if isinstance(budget, Budget) else Budget(space, budget, "MACs")


@dataclass
class SearchResult:
    history: pd.DataFrame
    best: dict | None          # the winning row (widths as dicts), None if no feasible pair was found

    def pareto(self, macs="g_macs", score="score_g") -> pd.DataFrame:
        return pareto_front(self.history, macs, score)


def pareto_front(history: pd.DataFrame, macs="g_macs", score="score_g") -> pd.DataFrame:
    """Rows not dominated in (MACs, score): nothing else is both smaller and better."""
    ok = history[history["error"].isna() | (history["error"] == "")].sort_values([macs, score])
    front, best = [], math.inf
    for idx, row in ok.iterrows():
        if row[score] < best:
            front.append(idx)
            best = row[score]
    return ok.loc[front]


def _feedback(widths, metrics, role, feasible) -> Feedback:
    if metrics is None:
        return Feedback(widths=widths or {}, score=math.inf, macs=0, feasible=False, metrics={})
    key = "score_g" if role == "G" else "score_d"
    macs = metrics["g_macs"] if role == "G" else metrics["d_macs"]
    return Feedback(widths=widths, score=metrics[key], macs=macs, feasible=feasible,
                    metrics={k: metrics[k] for k in ("density", "l1", "psnr_teacher", "balance", "d_fidelity", "score")})


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _clean_record(record: dict) -> dict:
    """A history CSV record back into the types a live round produces (NaN → missing, "True" → True)."""
    row = {k: v for k, v in record.items() if not (isinstance(v, float) and math.isnan(v))}
    row["error"] = row.get("error") or ""
    for key in ("g_widths", "d_widths"):
        row[key] = row.get(key) if isinstance(row.get(key), str) else "null"
    for key in ("g_feasible", "d_feasible", "feasible"):
        if key in row:
            row[key] = str(row[key]) == "True"
    row["round"] = int(row["round"])
    return row


def _row_metrics(row) -> dict | None:
    if row.get("error"):
        return None
    return {k: row[k] for k in ("density", "l1", "psnr_teacher", "balance", "d_fidelity", "score_g", "score_d",
                                "score")} | {
        "g_macs": int(row["g_macs"]), "d_macs": int(row["d_macs"])}


class CollaborativeSearch:
    """Runs the loop; ``run()`` returns a ``SearchResult``. Budgets: ``Budget`` objects or MACs limits.
    ``on_agent_error``: "stop" or "skip"."""

    def __init__(self, evaluator, g_agent, d_agent, g_budget, d_budget, rounds: int,
                 history_path=None, on_agent_error: str = "stop", progress: bool = True, fill: bool = True):
        if on_agent_error not in ("stop", "skip"):
            raise UserError(f"on_agent_error must be 'stop' or 'skip' (got {on_agent_error!r})")
        self.evaluator, self.g_agent, self.d_agent = evaluator, g_agent, d_agent
        self.g_budget, self.d_budget = as_budget(g_budget, evaluator.g_space), as_budget(d_budget, evaluator.d_space)
        self.rounds = rounds
        self.history_path = os.fspath(history_path) if history_path else None
        self.on_agent_error, self.progress, self.fill = on_agent_error, progress, fill
        self.rows: list[dict] = []

    # -- one round ---------------------------------------------------------------------------
    def _propose(self, agent, peer, space, role):
        try:
            widths = agent.propose(peer)
            return space.validate(widths), None
        except Exception as exc:  # a plugin agent's bug must not corrupt the history
            return None, f"{role}-agent {type(agent).__name__}: {type(exc).__name__}: {exc}".replace("\n", " ")

    def _round(self, index, g_peer, d_peer) -> dict:
        g_widths, g_err = self._propose(self.g_agent, d_peer, self.evaluator.g_space, "G")
        d_widths, d_err = self._propose(self.d_agent, g_peer, self.evaluator.d_space, "D")
        row = {"round": index, "phase": "search", "g_widths": json.dumps(g_widths), "d_widths": json.dumps(d_widths),
               "error": "; ".join(e for e in (g_err, d_err) if e)}
        if not row["error"]:
            self._score(row, g_widths, d_widths)
        return row

    def _score(self, row, g_widths, d_widths) -> None:
        row.update(self.evaluator.evaluate(g_widths, d_widths))
        for net, widths, budget in (("g", g_widths, self.g_budget), ("d", d_widths, self.d_budget)):
            if budget.unit == "ms":
                row[f"{net}_ms"] = budget.cost(widths)
            row[f"{net}_feasible"] = budget.fits(widths)
        row["feasible"] = row["g_feasible"] and row["d_feasible"]

    def _fill(self) -> None:
        """Score the winner grown into the unused budget (see the module docstring)."""
        best = self.best()
        if best is None:
            return
        g_widths = fill_budget(self.evaluator.g_space, best["g_widths"], self.g_budget)
        d_widths = fill_budget(self.evaluator.d_space, best["d_widths"], self.d_budget)
        if (g_widths, d_widths) == (best["g_widths"], best["d_widths"]):
            return
        row = {"round": len(self.rows), "phase": "fill", "g_widths": json.dumps(g_widths),
               "d_widths": json.dumps(d_widths), "error": ""}
        self._score(row, g_widths, d_widths)
        self.rows.append(row)
        self._save()

    def _observe(self, row) -> tuple[Feedback, Feedback]:
        metrics = _row_metrics(row)
        g_widths, d_widths = json.loads(row["g_widths"]), json.loads(row["d_widths"])
        g_fb = _feedback(g_widths, metrics, "G", bool(row.get("g_feasible")) if metrics else False)
        d_fb = _feedback(d_widths, metrics, "D", bool(row.get("d_feasible")) if metrics else False)
        if g_widths is not None:
            self.g_agent.observe(g_fb)
        if d_widths is not None:
            self.d_agent.observe(d_fb)
        return g_fb, d_fb

    # -- history -------------------------------------------------------------------------------
    def _replay(self) -> tuple[Feedback | None, Feedback | None]:
        """Feed a previous run's history to the fresh agents; they must propose what they proposed then."""
        g_peer = d_peer = None
        if not (self.history_path and os.path.exists(self.history_path)):
            return g_peer, d_peer
        try:
            old = pd.read_csv(self.history_path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise UserError(f"{self.history_path}: cannot resume from this history ({exc})") from None
        for record in old.to_dict("records"):
            row = _clean_record(record)
            if row.get("phase") == "fill":   # not an agent's proposal; recomputed after the rounds
                break
            g_widths, _ = self._propose(self.g_agent, d_peer, self.evaluator.g_space, "G")
            d_widths, _ = self._propose(self.d_agent, g_peer, self.evaluator.d_space, "D")
            if json.dumps(g_widths) != row["g_widths"] or json.dumps(d_widths) != row["d_widths"]:
                raise UserError(f"{self.history_path}: round {row['round']} does not match what the agents propose "
                                "now; the seed, agents, budget or space changed — use a new output directory")
            self.rows.append(row)
            g_peer, d_peer = self._observe(row)
        return g_peer, d_peer

    def _save(self) -> None:
        if self.history_path:
            atomic_write_text(self.history_path, self.history().to_csv(index=False))

    def history(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=HISTORY_COLUMNS)

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> SearchResult:
        g_peer, d_peer = self._replay()
        start = len(self.rows)
        bar = tqdm(total=self.rounds, initial=start, desc="search", disable=not self.progress, leave=False)
        for index in range(start, self.rounds):
            if self.g_agent.done() and self.d_agent.done():
                break
            row = self._round(index, g_peer, d_peer)
            self.rows.append(row)
            g_peer, d_peer = self._observe(row)
            self._save()
            bar.update(1)
            best = self.best()
            bar.set_postfix(best=f"{best['score']:.4g}" if best else "-", evals=self.evaluator.evaluations)
            if row["error"] and self.on_agent_error == "stop":
                bar.close()
                raise UserError(f"search stopped at round {index}: {row['error']} (history kept in "
                                f"{self.history_path or 'memory'}; use on_agent_error='skip' to go on)")
        bar.close()
        if self.fill:
            self._fill()
        return SearchResult(self.history(), self.best())

    def best(self) -> dict | None:
        """The fill row when there is one, else the lowest-scoring feasible pair."""
        feasible = [r for r in self.rows if r.get("feasible") is True and not r.get("error")]
        if not feasible:
            return None
        filled = [r for r in feasible if r.get("phase") == "fill"]
        row = filled[-1] if filled else min(feasible, key=lambda r: (r["score"], r["round"]))
        return dict(row, g_widths=json.loads(row["g_widths"]), d_widths=json.loads(row["d_widths"]))


def save_winner(path, best: dict, g_spec: dict | None = None, d_spec: dict | None = None) -> None:
    """The winning widths as YAML (plain data), with what they were measured at."""
    data = {"generator": {"spec": g_spec, "widths": best["g_widths"], "macs": int(best["g_macs"])},
            "discriminator": {"spec": d_spec, "widths": best["d_widths"], "macs": int(best["d_macs"])},
            "score": float(best["score"]), "round": int(best["round"]),
            **{f"{net}_predicted_ms": float(best[f"{k}_ms"]) for net, k in (("generator", "g"), ("discriminator", "d"))
               if _present(best.get(f"{k}_ms"))},
            "metrics": {k: float(best[k]) for k in ("density", "l1", "psnr_teacher", "balance", "d_fidelity",
                                                    "score_g", "score_d")}}
    atomic_write_yaml(path, data)


def search(evaluator, g_agent, d_agent, g_budget, d_budget, rounds: int = 50, out_dir=None,
           on_agent_error: str = "stop", progress: bool = True, g_spec=None, d_spec=None,
           fill: bool = True) -> SearchResult:
    """Run a collaborative search; with ``out_dir``, write/resume ``history.csv`` and write ``widths.yaml``."""
    history = os.path.join(out_dir, "history.csv") if out_dir else None
    t0 = time.perf_counter()
    result = CollaborativeSearch(evaluator, g_agent, d_agent, g_budget, d_budget, rounds, history,
                                 on_agent_error, progress, fill).run()
    if out_dir and result.best:
        save_winner(os.path.join(out_dir, "widths.yaml"), result.best, g_spec, d_spec)
    result.seconds = time.perf_counter() - t0
    return result
