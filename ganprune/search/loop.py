"""The collaborative search: a G-agent and a D-agent take turns, each seeing its peer's latest result.

Each round the G-agent proposes with the D-agent's last feedback as its peer, the D-agent with the
G-agent's, and the evaluator scores the pair once. Only pairs inside both budgets can win. Every round is
appended to a history CSV as it happens; a killed search resumes by *replaying* that history into fresh
agents (they are deterministic functions of seed and feedback) and carries on where it stopped.

After the last round the winner gives back the budget it leaves unused (``fill``): agents shrink in
whole width choices and usually stop well under the budget, and the objective, scored before any
fine-tuning, barely tells the two apart — but fine-tuning uses the capacity (docs/benchmarks.md, search
design figures). The filled pair is scored once more and recorded as a ``fill`` row; it is the result.

Then uniform pruning itself is scored (``uniform`` row: every group at the widest common fraction within the
budget, grown into it like the winner) and wins if it scores strictly better: a search never returns a pair
its own objective rates below the standard baseline (on the rank benchmark at 10% G MACs the uniform
row won the search: docs/benchmarks.md).

Last, with ``finalists`` > 0, the best few distinct pairs found so far are each briefly distilled and scored
again (``finalist`` rows, ``ganprune.search.finalists``); the best finalist is the result.
"""
from __future__ import annotations

import json
import math
import os
import time
import zlib
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import pandas as pd
import torch
import yaml
from tqdm.auto import tqdm

from ganprune.search.agent import Feedback, call_agent
from ganprune.search.budget import as_budget, fill_budget, uniform_widths
from ganprune.core.errors import UserError
from ganprune.core.timing import Forecast
from ganprune.core.guard import DEFAULT_TIMEOUT, PluginTimeout
from ganprune.core.io import atomic_write_text, atomic_write_yaml
from ganprune.core.outdir import run_lock

AFTER_ROUNDS = ("fill", "uniform", "finalist")   # history rows scored after the agents' rounds, never replayed to them

# Columns a history needs to be resumed (g_ms/d_ms came later and may be missing from older histories).
REQUIRED_COLUMNS = ("round", "phase", "g_widths", "d_widths", "g_macs", "d_macs", "g_feasible", "d_feasible",
                    "feasible", "density", "l1", "psnr_pooled", "balance", "d_fidelity", "score_g", "score_d",
                    "score", "error")
HISTORY_COLUMNS = ["round", "phase", "g_widths", "d_widths", "g_macs", "d_macs", "g_ms", "d_ms", "g_feasible", "d_feasible", "feasible",
                   "density", "l1", "psnr_pooled", "balance", "d_fidelity", "score_g", "score_d", "score", "seconds", "error"]


@contextmanager
def candidate_rng(seed: int, g_widths: dict, d_widths: dict, device=None):
    """Torch's global RNG seeded from ``seed`` and the candidate itself for the block, restored after it.

    Scoring a candidate can draw from the global RNG (a generator with dropout re-estimating BatchNorm in
    train mode does), so without this a candidate's score depended on how many candidates were scored
    before it in the same process: a resumed or extended search, or ``--stage prune`` alone, scored and
    built the same widths differently from the uninterrupted run. Keyed on the widths, not the round, so the
    same pair always gets the same score and the same pruned weights."""
    key = zlib.crc32(json.dumps([g_widths, d_widths], sort_keys=True).encode())
    device = torch.device(device or "cpu")
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        mixed = (int(seed) * 0x9E3779B1 + key) % (2 ** 63)
        torch.default_generator.manual_seed(mixed)
        if cuda:
            torch.cuda.manual_seed(mixed)
        yield


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
                    metrics={k: metrics[k] for k in ("density", "l1", "psnr_pooled", "balance", "d_fidelity", "score")})


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _clean_record(record: dict) -> dict:
    """A history CSV record back into the types a live round produces (NaN → missing, "True" → True)."""
    row = {k: v for k, v in record.items() if not (isinstance(v, float) and math.isnan(v))}
    row["error"] = row.get("error") or ""
    for key in ("g_widths", "d_widths"):
        row[key] = row.get(key) if isinstance(row.get(key), str) else "null"
        widths = json.loads(row[key])
        if widths is not None and not (isinstance(widths, dict) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in widths.values())):
            raise ValueError(f"{key} is not a JSON object of group -> width")
    for key in ("g_feasible", "d_feasible", "feasible"):
        if key in row:
            row[key] = str(row[key]) == "True"
    if not float(row["round"]).is_integer():
        raise ValueError(f"round {row['round']!r} is not a whole number")
    row["round"] = int(row["round"])
    if not row["error"]:
        for key in ("g_macs", "d_macs", "score_g", "score_d", "score"):
            float(row[key])
    return row


# pandas < 3 parses floats to within an ulp unless asked for round-trip precision; pandas 3 is exact (and
# deprecates the option).
_EXACT_FLOATS = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}


def read_history(path) -> list[dict]:
    """The rows of a search history CSV as a live search produced them; one line if it is not one."""
    try:
        old = pd.read_csv(path, **_EXACT_FLOATS)   # replayed feedback must equal the live feedback bit for bit
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise UserError(f"{path}: cannot resume from this history ({str(exc).splitlines()[0]})") from None
    old = old.rename(columns={"psnr_teacher": "psnr_pooled"})   # its name in older histories
    missing = [c for c in REQUIRED_COLUMNS if c not in old.columns]
    if missing:
        raise UserError(f"{path}: not a ganprune search history (missing column(s) {', '.join(missing)}); "
                        "use a new output directory or remove this file")
    rows = []
    for i, record in enumerate(old.to_dict("records")):
        try:
            rows.append(_clean_record(record))
        except (ValueError, TypeError, KeyError) as exc:
            raise UserError(f"{path}: row {i + 1} is not a valid history row ({exc}); use a new output "
                            "directory or remove this file") from None
    return rows


def load_winner(path) -> dict:
    """A ``widths.yaml`` (``save_winner``) checked for what pruning needs: each net's widths and MACs."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a widths file (generator:, discriminator: with widths and macs), "
                        f"got {type(data).__name__}")
    for net in ("generator", "discriminator"):
        part = data.get(net)
        widths = part.get("widths") if isinstance(part, dict) else None
        if not isinstance(widths, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(
                v, bool) for k, v in widths.items()):
            raise UserError(f"{path}: {net}.widths: expected a mapping of group name to channels "
                            "(a widths.yaml written by `ganprune search`)")
        if not isinstance(part.get("macs"), int) or isinstance(part.get("macs"), bool):
            raise UserError(f"{path}: {net}.macs: expected a whole number of MACs")
    return data


def _row_metrics(row) -> dict | None:
    if row.get("error"):
        return None
    return {k: row[k] for k in ("density", "l1", "psnr_pooled", "balance", "d_fidelity", "score_g", "score_d",
                                "score")} | {
        "g_macs": int(row["g_macs"]), "d_macs": int(row["d_macs"])}


class CollaborativeSearch:
    """Runs the loop; ``run()`` returns a ``SearchResult``. Budgets: ``Budget`` objects or MACs limits.
    ``on_agent_error``: "stop" or "skip". ``d_agent`` None (with ``d_budget`` None and an evaluator without
    a D space): G alone is searched, every row's D widths are ``{}``. ``max_rounds`` (default ``rounds``):
    while no pair fits both budgets the loop goes on past ``rounds`` up to this many."""

    def __init__(self, evaluator, g_agent, d_agent, g_budget, d_budget, rounds: int,
                 history_path=None, on_agent_error: str = "stop", progress: bool = True, fill: bool = True,
                 seed: int = 0, agent_timeout: float | None = DEFAULT_TIMEOUT, max_rounds: int | None = None,
                 uniform: bool = True, finalists: int = 0, distiller=None):
        if on_agent_error not in ("stop", "skip"):
            raise UserError(f"on_agent_error must be 'stop' or 'skip' (got {on_agent_error!r})")
        self.evaluator, self.g_agent, self.d_agent = evaluator, g_agent, d_agent
        self.g_budget = as_budget(g_budget, evaluator.g_space)
        self.d_budget = as_budget(d_budget, evaluator.d_space) if d_agent is not None else None
        self.rounds = rounds
        self.max_rounds = max(rounds, max_rounds or rounds)
        self.history_path = os.fspath(history_path) if history_path else None
        self.on_agent_error, self.progress, self.fill = on_agent_error, progress, fill
        self.seed, self.agent_timeout, self.uniform = seed, agent_timeout, uniform
        if finalists and distiller is None:
            raise UserError("finalists > 0 needs a distiller (ganprune.search.finalists.Distiller) to train them with")
        self.finalists, self.distiller = finalists, distiller
        self.rows: list[dict] = []

    # -- one round ---------------------------------------------------------------------------
    def _call(self, agent, role, what, fn):
        return call_agent(agent, role, what, fn, self.agent_timeout)

    def _propose(self, agent, peer, space, role):
        try:
            widths = self._call(agent, role, "ask()", lambda: agent.propose(peer))
            return space.validate(widths), None
        except PluginTimeout:   # the call may still be running: the agent cannot be asked again
            raise
        except UserError as exc:  # a plugin agent's bug must not corrupt the history
            return None, str(exc).replace("\n", " ")

    def _propose_both(self, g_peer, d_peer):
        g_widths, g_err = self._propose(self.g_agent, d_peer, self.evaluator.g_space, "G")
        if self.d_agent is None:   # G-only: nothing to propose for D
            return g_widths, {}, g_err, None
        d_widths, d_err = self._propose(self.d_agent, g_peer, self.evaluator.d_space, "D")
        return g_widths, d_widths, g_err, d_err

    def _round(self, index, g_peer, d_peer) -> dict:
        g_widths, d_widths, g_err, d_err = self._propose_both(g_peer, d_peer)
        row = {"round": index, "phase": "search", "g_widths": json.dumps(g_widths), "d_widths": json.dumps(d_widths),
               "error": "; ".join(e for e in (g_err, d_err) if e)}
        if not row["error"]:
            self._score(row, g_widths, d_widths)
        return row

    def _score(self, row, g_widths, d_widths) -> None:
        with candidate_rng(self.seed, g_widths, d_widths, getattr(self.evaluator, "device", None)):
            row.update(self.evaluator.score_pair(g_widths, d_widths))
        for net, widths, budget in (("g", g_widths, self.g_budget), ("d", d_widths, self.d_budget)):
            if budget is None:   # G-only: no D to fit
                row[f"{net}_feasible"] = True
                continue
            if budget.unit == "ms":
                row[f"{net}_ms"] = budget.cost(widths)
            row[f"{net}_feasible"] = budget.fits(widths)
        row["feasible"] = row["g_feasible"] and row["d_feasible"]

    def _score_after_rounds(self, phase: str, g_widths: dict, d_widths: dict) -> None:
        """Score one pair as a history row of ``phase`` (one of ``AFTER_ROUNDS``), append and save it."""
        row = {"round": len(self.rows), "phase": phase, "g_widths": json.dumps(g_widths),
               "d_widths": json.dumps(d_widths), "error": ""}
        self._score(row, g_widths, d_widths)
        self.rows.append(row)
        self._save()

    def _fill(self) -> None:
        """Score the winner grown into the unused budget (see the module docstring)."""
        best = self.best()
        if best is None:
            return
        g_widths = fill_budget(self.evaluator.g_space, best["g_widths"], self.g_budget)
        d_widths = (fill_budget(self.evaluator.d_space, best["d_widths"], self.d_budget) if self.d_budget is not None
                    else best["d_widths"])
        if (g_widths, d_widths) == (best["g_widths"], best["d_widths"]):
            return
        self._score_after_rounds("fill", g_widths, d_widths)

    def _uniform(self) -> None:
        """Score uniform pruning at the same budgets (see the module docstring); only beside a winner."""
        if self.best() is None:
            return
        g_widths = uniform_widths(self.evaluator.g_space, self.g_budget)
        d_widths = uniform_widths(self.evaluator.d_space, self.d_budget) if self.d_budget is not None else {}
        self._score_after_rounds("uniform", g_widths, d_widths)

    def _finalists(self) -> None:
        """Distil and score again the best few distinct pairs (see ``ganprune.search.finalists``)."""
        from ganprune.search.finalists import finalist_rows
        chosen = finalist_rows(self.rows, self.finalists)
        bar = tqdm(chosen, desc="finalists", disable=not self.progress, leave=False)
        self.evaluator.refine = self.distiller
        try:
            for found in bar:
                self._score_after_rounds("finalist", json.loads(found["g_widths"]), json.loads(found["d_widths"]))
        finally:
            self.evaluator.refine = None
        bar.close()

    def _observe(self, row) -> tuple[Feedback, Feedback]:
        metrics = _row_metrics(row)
        g_widths, d_widths = json.loads(row["g_widths"]), json.loads(row["d_widths"])
        g_fb = _feedback(g_widths, metrics, "G", bool(row.get("g_feasible")) if metrics else False)
        d_fb = _feedback(d_widths, metrics, "D", bool(row.get("d_feasible")) if metrics else False)
        if g_widths is not None:
            self._call(self.g_agent, "G", "tell()", lambda: self.g_agent.observe(g_fb))
        if d_widths is not None and self.d_agent is not None:
            self._call(self.d_agent, "D", "tell()", lambda: self.d_agent.observe(d_fb))
        return g_fb, d_fb

    # -- history -------------------------------------------------------------------------------
    def _replay(self) -> tuple[Feedback | None, Feedback | None]:
        """Feed a previous run's history to the fresh agents; they must propose what they proposed then."""
        g_peer = d_peer = None
        if not (self.history_path and os.path.exists(self.history_path)):
            return g_peer, d_peer
        for row in read_history(self.history_path):
            if row.get("phase") in AFTER_ROUNDS:   # not an agent's proposal; recomputed after the rounds
                break
            g_widths, d_widths, _, _ = self._propose_both(g_peer, d_peer)
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
        forecast = Forecast("search", self.rounds - start, unit="round", enabled=self.progress)
        index = start
        while index < self.rounds or (index < self.max_rounds and self.best() is None):
            if self._call(self.g_agent, "G", "done()", self.g_agent.done) and (
                    self.d_agent is None or self._call(self.d_agent, "D", "done()", self.d_agent.done)):
                break
            try:
                row = self._round(index, g_peer, d_peer)
            except PluginTimeout as exc:
                bar.close()
                raise UserError(f"search stopped at round {index}: {exc} (history kept in "
                                f"{self.history_path or 'memory'})") from None
            self.rows.append(row)
            self._save()
            try:
                g_peer, d_peer = self._observe(row)
            except UserError as exc:
                bar.close()
                raise UserError(f"search stopped at round {index}: {exc} (history kept in "
                                f"{self.history_path or 'memory'})") from None
            bar.update(1)
            forecast.tick()
            best = self.best()
            bar.set_postfix(best=f"{best['score']:.4g}" if best else "-", evals=self.evaluator.evaluations)
            if row["error"] and self.on_agent_error == "stop":
                bar.close()
                raise UserError(f"search stopped at round {index}: {row['error']} (history kept in "
                                f"{self.history_path or 'memory'}; use on_agent_error='skip' to go on)")
            index += 1
        bar.close()
        if self.fill:
            self._fill()
        if self.uniform:
            self._uniform()
        if self.finalists and self.best() is not None:
            self._finalists()
        return SearchResult(self.history(), self.best())

    def best(self) -> dict | None:
        """The lowest-scoring feasible pair of the rounds; the fill row instead when it scores at least as
        well (a fill that scores worse is kept in the history, never the result); the uniform row instead
        when it scores strictly better than both; once finalists are scored, the best finalist."""
        feasible = [r for r in self.rows if r.get("feasible") is True and not r.get("error")]
        finalists = [r for r in feasible if r.get("phase") == "finalist"]
        if finalists:
            row = min(finalists, key=lambda r: (r["score"], r["round"]))
            return dict(row, g_widths=json.loads(row["g_widths"]), d_widths=json.loads(row["d_widths"]))
        found = [r for r in feasible if r.get("phase") not in AFTER_ROUNDS]
        if not found:
            return None
        row = min(found, key=lambda r: (r["score"], r["round"]))
        filled = [r for r in feasible if r.get("phase") == "fill"]
        if filled and filled[-1]["score"] <= row["score"]:
            row = filled[-1]
        uniform = [r for r in feasible if r.get("phase") == "uniform"]
        if uniform and uniform[-1]["score"] < row["score"]:
            row = uniform[-1]
        return dict(row, g_widths=json.loads(row["g_widths"]), d_widths=json.loads(row["d_widths"]))


def save_winner(path, best: dict, g_spec: dict | None = None, d_spec: dict | None = None,
                budgets: tuple | None = None) -> None:
    """The winning widths as YAML (plain data), with what they were measured at and, given ``budgets``
    (G's and D's ``Budget``, D's None when G was searched alone), the limits they had to fit."""
    data = {"generator": {"spec": g_spec, "widths": best["g_widths"], "macs": int(best["g_macs"])},
            "discriminator": {"spec": d_spec, "widths": best["d_widths"], "macs": int(best["d_macs"])},
            **({"budget": {net: ({"limit": float(b.limit), "unit": b.unit} if b is not None else None)
                           for net, b in zip(("generator", "discriminator"), budgets)},
                "g_only": budgets[1] is None} if budgets else {}),
            "score": float(best["score"]), "round": int(best["round"]),
            **{f"{net}_predicted_ms": float(best[f"{k}_ms"]) for net, k in (("generator", "g"), ("discriminator", "d"))
               if _present(best.get(f"{k}_ms"))},
            "metrics": {k: float(best[k]) for k in ("density", "l1", "psnr_pooled", "balance", "d_fidelity",
                                                    "score_g", "score_d")}}
    atomic_write_yaml(path, data)


def search(evaluator, g_agent, d_agent, g_budget, d_budget, rounds: int, out_dir=None,
           on_agent_error: str = "stop", progress: bool = True, g_spec=None, d_spec=None,
           fill: bool = True, seed: int = 0, agent_timeout: float | None = DEFAULT_TIMEOUT,
           max_rounds: int | None = None, uniform: bool = True, finalists: int = 0,
           distiller=None) -> SearchResult:
    """Run a collaborative search; with ``out_dir``, write/resume ``history.csv`` and write ``widths.yaml``.
    ``seed`` keys the RNG each candidate is scored under (``candidate_rng``); ``agent_timeout``: seconds one
    agent call may take (None/0: no limit); ``d_agent`` None: G alone; ``max_rounds``: see
    ``CollaborativeSearch``; ``uniform``: also score uniform pruning, which wins if it scores better;
    ``finalists``: distil the best few with ``distiller`` and pick among them (``ganprune.search.finalists``)."""
    history = os.path.join(out_dir, "history.csv") if out_dir else None
    t0 = time.perf_counter()
    with run_lock(out_dir) if out_dir else nullcontext():   # two searches appending to one history: refused
        loop = CollaborativeSearch(evaluator, g_agent, d_agent, g_budget, d_budget, rounds, history,
                                   on_agent_error, progress, fill, seed, agent_timeout, max_rounds, uniform,
                                   finalists, distiller)
        result = loop.run()
        if out_dir and result.best:
            save_winner(os.path.join(out_dir, "widths.yaml"), result.best, g_spec, d_spec,
                        (loop.g_budget, loop.d_budget))
    result.seconds = time.perf_counter() - t0
    return result
