"""Run the search as a real local NNI experiment and bring the trials back as a ``ganprune search`` history.

``run_experiment`` writes, under ``out``: ``trial_config.yaml`` (the resolved options, absolute paths:
what every trial and the tuner read), ``search_space.json``, ``nni-experiments/<id>/`` (NNI's working
directory: logs, trial folders, database), ``trial_jobs.json`` (NNI's raw trial records),
``history.csv`` (columns ``ganprune.search.loop.HISTORY_COLUMNS``,
one row per trial, failed trials with ``error`` set) and ``widths.yaml`` (best feasible trial).
The experiment is always stopped, also when waiting fails or times out.

NNI 3.0's web server listens on all interfaces (its REST server calls ``listen(port)`` with no host and
takes no option to change that); ganprune talks to it on localhost only. Use a firewall, or run inside a
container/VM, if the port must not be reachable from the network. NNI also records every experiment in
``~/nni-experiments/.experiment`` (the ``nnictl`` experiment list), whatever the working directory.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import shlex
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Mapping

import pandas as pd

from ganprune.core.errors import UserError
from ganprune.nni.space import ENCODINGS

BUILTIN_TUNERS = ("TPE", "Random", "Anneal", "Evolution", "GridSearch")
TUNERS = ("ours",) + BUILTIN_TUNERS
# Tuners that model an ordered number (TPE: Parzen densities; Anneal: hyperopt's annealing near good values)
# and so gain from ordinal widths. NNI 3.0's Random samples each value alike either way, Evolution's mutation
# re-draws a dimension uniformly, GridSearch enumerates: order tells them nothing, so they keep `choice`.
ORDINAL_TUNERS = ("TPE", "Anneal")
_log = logging.getLogger("ganprune.nni")


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ExperimentResult:
    history: pd.DataFrame
    best: dict | None
    experiment_id: str
    status: str
    timings: dict = field(default_factory=dict)   # startup_s, wait_s, total_s, trial_wall_s (median)


def _tuner_config(tuner: str, trials: int, seed: int, trial_config: str, tuner_options: dict):
    from nni.experiment import AlgorithmConfig, CustomAlgorithmConfig
    if tuner == "ours":
        import ganprune
        code_dir = os.path.dirname(os.path.dirname(os.path.abspath(ganprune.__file__)))
        return CustomAlgorithmConfig(class_name="ganprune.nni.tuner.GanpruneTuner", code_directory=code_dir,
                                     class_args={"config": trial_config, **tuner_options})
    if tuner == "Anneal":
        try:
            import hyperopt  # noqa: F401  (NNI's Anneal tuner is built on it)
        except ImportError:
            raise UserError("--tuner Anneal needs the hyperopt package (pip install hyperopt)") from None
    args = {"TPE": {"optimize_mode": "minimize", "seed": seed}, "Random": {"seed": seed},
            "Anneal": {"optimize_mode": "minimize"},
            "Evolution": {"optimize_mode": "minimize", "population_size": max(2, min(32, trials // 2))},
            "GridSearch": None}[tuner]
    return AlgorithmConfig(name=tuner, class_args=args)


def width_encoding(tuner: str, encoding: str = "auto") -> str:
    """The search-space encoding an experiment uses (``ENCODINGS``, or ``auto``: ordinal for
    ``ORDINAL_TUNERS``, else choice)."""
    if encoding not in ("auto", *ENCODINGS):
        raise UserError(f"--encoding {encoding!r}: expected one of {', '.join(('auto', *ENCODINGS))}")
    if encoding == "auto":
        return "ordinal" if tuner in ORDINAL_TUNERS else "choice"
    if tuner == "ours" and encoding == "ordinal":
        raise UserError("--encoding ordinal: --tuner ours proposes widths itself; use --encoding choice (or auto)")
    return encoding


def _trial_error(exp_dir: str, trial_id: str) -> str:
    """The last line the failed trial wrote to stderr (NNI 3.0 local: environments/<env>/trials/<id>/trial.stderr)."""
    lines = []
    for path in glob.glob(os.path.join(exp_dir, "environments", "*", "trials", trial_id, "trial.stderr")):
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = [ln.strip() for ln in fh if ln.strip()]
    return f"trial {trial_id} failed" + (f": {lines[-1]}" if lines else "")


def _final_metric(job: dict) -> tuple[int | None, dict | None]:
    """(parameter id, value) of a job's final result: the id the trial itself says it ran."""
    for m in job.get("finalMetricData") or []:
        if m.get("type", "FINAL") == "FINAL":
            value = json.loads(m["data"])
            value = json.loads(value) if isinstance(value, str) else value
            return int(m["parameterId"]), value
    return None, None


def actual_parameters(jobs: list) -> dict[str, int]:
    """Trial id → parameter id it really ran.

    NNI 3.0's local training service can hand concurrently started trials each other's parameters: the
    job record's ``hyperParameters`` then names a different parameter id than the one the trial received
    (and reports with its final result). A reporting trial's own id is the truth; trials that did not
    report (failed) get the ids no report claimed, their recorded id first. With one trial at a time
    there is nothing to fix."""
    recorded = {j["trialJobId"]: json.loads(j["hyperParameters"][0])["parameter_id"]
                for j in jobs if j.get("hyperParameters")}
    actual = {j["trialJobId"]: pid for j in jobs for pid, _ in [_final_metric(j)] if pid is not None}
    free = [pid for pid in recorded.values() if pid not in set(actual.values())]
    silent = [t for t in recorded if t not in actual]
    for t in silent:
        if recorded[t] in free:
            actual[t] = recorded[t]
            free.remove(recorded[t])
    for t in silent:
        if t not in actual and free:
            actual[t] = free.pop(0)
    return actual


def collect_history(jobs: list, setup, exp_dir: str) -> pd.DataFrame:
    """NNI trial jobs → history rows in the ``ganprune search`` format, ordered by NNI's sequence id."""
    from ganprune.nni.space import from_params, metric_columns
    from ganprune.search.loop import HISTORY_COLUMNS
    params_of = {}
    for job in jobs:
        if job.get("hyperParameters"):
            record = json.loads(job["hyperParameters"][0])
            params_of[record["parameter_id"]] = record["parameters"]
    actual = actual_parameters(jobs)
    rows = []
    for job in sorted(jobs, key=lambda j: j.get("sequenceId", 0)):
        params = params_of.get(actual.get(job["trialJobId"]), {})
        row = {"round": int(job.get("sequenceId", len(rows))), "phase": "search", "error": ""}
        try:
            g_widths, d_widths = from_params(params, setup.g_space, setup.d_space)
            row["g_widths"], row["d_widths"] = json.dumps(g_widths), json.dumps(d_widths)
        except UserError:   # widths outside the space (an edited search space): keep what NNI sent
            row["g_widths"] = json.dumps({k[2:]: v for k, v in params.items() if k.startswith("G/")})
            row["d_widths"] = json.dumps({k[2:]: v for k, v in params.items() if k.startswith("D/")})
        if job.get("startTime") and job.get("endTime"):
            row["seconds"] = (job["endTime"] - job["startTime"]) / 1000
        _, metric = _final_metric(job)
        if job.get("status") == "SUCCEEDED" and isinstance(metric, dict):
            row.update({k: metric[k] for k in metric_columns() if k in metric})
            for key in ("g_widths", "d_widths"):   # what the trial scored (a repaired candidate) over what NNI sent
                if isinstance(metric.get(key), str):
                    row[key] = metric[key]
            row["g_feasible"] = row["g_macs"] <= setup.g_budget
            row["d_feasible"] = row["d_macs"] <= setup.d_budget
            row["feasible"] = bool(row["g_feasible"] and row["d_feasible"])
        elif job.get("status") == "SUCCEEDED":
            row["error"] = f"trial {job['trialJobId']} reported no final result"
        else:
            row["error"] = _trial_error(exp_dir, job["trialJobId"]) if job.get("status") == "FAILED" else \
                f"trial {job['trialJobId']} {job.get('status', 'UNKNOWN')}"
        rows.append(row)
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def write_results(out: str, jobs: list, setup, exp_dir: str) -> tuple[pd.DataFrame, dict | None]:
    """NNI's trial records as ``out/history.csv`` and, when a trial was feasible, ``out/widths.yaml``: what
    ``nni run`` and ``nni collect`` both write. Returns ``(history, best row or None)``."""
    from ganprune.core.io import atomic_write_text
    from ganprune.search.loop import save_winner
    history = collect_history(jobs, setup, exp_dir)
    os.makedirs(out, exist_ok=True)
    atomic_write_text(os.path.join(out, "history.csv"), history.to_csv(index=False))
    best = best_row(history)
    if best:
        save_winner(os.path.join(out, "widths.yaml"), best, setup.g_spec, setup.d_spec,
                    (setup.search.g_budget, setup.search.d_budget))
    return history, best


def best_row(history: pd.DataFrame) -> dict | None:
    ok = history[(history["error"].fillna("") == "") & (history["feasible"] == True)]  # noqa: E712
    if ok.empty:
        return None
    row = ok.sort_values(["score", "round"]).iloc[0].to_dict()
    return dict(row, g_widths=json.loads(row["g_widths"]), d_widths=json.loads(row["d_widths"]))


def closest_row(history: pd.DataFrame, g_budget: float, d_budget: float) -> dict | None:
    """The scored trial nearest to fitting: the smallest worst ratio of MACs to budget."""
    ok = history[history["error"].fillna("") == ""]
    if ok.empty:
        return None
    ratio = [max(g / g_budget, d / d_budget) for g, d in zip(ok["g_macs"], ok["d_macs"])]
    return ok.iloc[min(range(len(ratio)), key=ratio.__getitem__)].to_dict()


def _start(config, port: int, attempts: int = 3):
    """A started experiment. NNI gives its web server about 3 s to answer before it gives up and kills
    it; a busy machine can need longer, so a failed start is retried (new experiment id) a few times."""
    from nni.experiment import Experiment
    for attempt in range(1, attempts + 1):
        exp = Experiment(config)
        try:
            exp.start(port)
            return exp
        except Exception as exc:  # noqa: BLE001  (NNI raises plain RuntimeError/requests errors here)
            try:
                exp.stop()    # clears NNI's atexit hook and log handler of the failed start
            except Exception:  # noqa: BLE001
                pass
            if attempt == attempts:
                raise UserError(f"NNI could not start an experiment on port {port} ({type(exc).__name__}: "
                                f"{exc}); logs: {os.path.join(config.experiment_working_directory, exp.id, 'log')}"
                                ) from None
            _log.warning("NNI experiment start failed (%s); retrying (%d/%d)", exc, attempt + 1, attempts)
            time.sleep(2)


def default_trials(tuner: str, setup, space: dict) -> int:
    """Trials when none are given: for 'ours', what its agents (``setup``'s, built with ``agents=True``) need
    to reach the budgets and refine (their ``rounds_hint``, at least 20; agents that propose within budget
    from the start: ``ganprune search``'s default rounds); for an NNI tuner, two per search dimension and at
    least 20 (its candidates are repaired into the budgets, so each one is a usable result)."""
    if tuner != "ours":
        return max(20, 2 * len(space))
    from ganprune.search.setup import default_rounds
    g, d = setup.g_agent, setup.d_agent
    hints = [a.rounds_hint() for a in (g, d) if a is not None]
    return max([20, *[int(h) for h in hints if h]]) if any(hints) else default_rounds(g, d)


def _report_progress(jobs: list, setup, exp_dir: str, seen: set, trials: int, say) -> None:
    """One line per trial that finished since the last call."""
    done = [j for j in jobs if j.get("status") in ("SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED",
                                                     "EARLY_STOPPED") and j["trialJobId"] not in seen]
    if not done:
        return
    history = collect_history(done, setup, exp_dir)
    for job, (_, row) in zip(sorted(done, key=lambda j: j.get("sequenceId", 0)), history.iterrows()):
        seen.add(job["trialJobId"])
        if row["error"]:
            say(f"trial {len(seen)}/{trials}: {row['error']}")
        else:
            say(f"trial {len(seen)}/{trials}: score {row['score']:.4g}, G {int(row['g_macs']):,} MACs"
                + (f", D {int(row['d_macs']):,} MACs" if setup.d_space is not None else "")
                + (", within budget" if row["feasible"] else ", over budget"))


def run_experiment(values: Mapping | None, out, tuner: str = "ours", trials: int | None = None, port: int = 8080,
                   timeout: float = 3600, concurrency: int = 1, search_space: dict | None = None,
                   tuner_options: dict | None = None, poll: float = 1.0, progress: bool = False,
                   keep_alive: bool = False, encoding: str = "auto", **overrides) -> ExperimentResult:
    """Start a local NNI experiment for the search described by the ``ganprune nni`` options (``values``,
    e.g. ``load_options(path)``, and/or keyword ``overrides``), wait for ``trials`` trials (at most
    ``timeout`` seconds), stop it, and write history + winner to ``out``.

    ``tuner``: "ours" (GanpruneTuner with the options' g_agent/d_agent) or an NNI built-in tuner name.
    ``trials`` None: ``default_trials``. ``search_space``: replaces the exported space (NNI tuners only; e.g.
    a restricted or edited space). ``encoding``: the widths as NNI sees them (``width_encoding``: auto is
    ordinal for TPE and Anneal, choice otherwise). ``progress``: a line per finished trial. ``keep_alive``:
    leave the experiment (and its web UI) running after the last trial until Ctrl-C."""
    from nni.experiment import ExperimentConfig

    from ganprune.core.io import atomic_write_text, atomic_write_yaml
    from ganprune.nni.space import Setup, options, resolved_options
    from ganprune.nni.space import search_space as make_space
    o = options(values, **overrides)
    if tuner not in TUNERS:
        raise UserError(f"--tuner {tuner!r}: expected one of {', '.join(TUNERS)}")
    if tuner == "ours":   # its agents learn from over-budget scores: never repair their proposals
        o["repair"] = False
    if (trials is not None and trials < 1) or concurrency < 1:
        raise UserError(f"--trials and --concurrency must be >= 1 (got {trials}, {concurrency})")
    encoding = width_encoding(tuner, encoding)
    if tuner == "ours" and search_space is not None:
        raise UserError("a custom search space works with NNI's tuners only; ours searches the config's spaces")
    with socket.socket() as s:
        if s.connect_ex(("localhost", port)) == 0:
            raise UserError(f"--port {port} is in use (another NNI experiment?); choose a free port")
    out = os.path.abspath(os.fspath(out))
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    setup = Setup(o, calib_images=1, agents=tuner == "ours" and trials is None)   # agents: to size the trials
    trial_config = os.path.join(out, "trial_config.yaml")
    atomic_write_yaml(trial_config, resolved_options(o))
    space = search_space if search_space is not None else make_space(setup.g_space, setup.d_space, encoding)
    atomic_write_text(os.path.join(out, "search_space.json"), json.dumps(space, indent=2) + "\n")
    trials = trials or default_trials(tuner, setup, space)
    say = (lambda line: print(line, flush=True)) if progress else _log.info
    if setup.d_space is None:
        say("G-only experiment: no discriminator checkpoint, so only G is searched and scored")
    if tuner_options is None:
        tuner_options = {"g_agent": o["g_agent"], "d_agent": o["d_agent"],
                         "agent_file": os.path.abspath(o["agent_file"]) if o["agent_file"] else None, "seed": o["seed"],
                         "g_agent_options": o["g_agent_options"], "d_agent_options": o["d_agent_options"]}

    config = ExperimentConfig("local")
    config.experiment_name = f"ganprune-{tuner}"
    config.search_space = space
    config.trial_command = (f"{shlex.quote(sys.executable)} -m ganprune nni trial "
                            f"--config {shlex.quote(trial_config)}")
    config.trial_code_directory = out
    config.trial_concurrency = concurrency
    config.max_trial_number = trials
    config.experiment_working_directory = os.path.join(out, "nni-experiments")
    config.tuner = _tuner_config(tuner, trials, o["seed"], trial_config, tuner_options)
    exp = _start(config, port)
    exp_dir = os.path.join(config.experiment_working_directory, exp.id)
    status, jobs, timings, seen = "NOT STARTED", [], {}, set()
    say(f"NNI experiment {exp.id}: {trials} trials, tuner {tuner}"
        + (f" ({encoding} widths)" if search_space is None else " (given search space)")
        + f", web UI http://localhost:{port}")
    from nni.experiment import rest
    try:
        timings["startup_s"] = time.perf_counter() - t0
        started = time.perf_counter()
        while True:
            status = exp.get_status()
            jobs = rest.get(exp.port, "/trial-jobs", exp.url_prefix)   # raw records: failed trials included
            _report_progress(jobs, setup, exp_dir, seen, trials, say)
            if status in ("DONE", "STOPPED", "ERROR"):
                break
            if time.perf_counter() - started > timeout:
                status = f"TIMEOUT after {timeout:g} s"
                break
            time.sleep(poll)
        timings["wait_s"] = time.perf_counter() - started
        if keep_alive:
            print(f"trials finished ({status}); the web UI stays up at http://localhost:{port} — press Ctrl-C to "
                  "stop the experiment", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
    finally:
        try:
            exp.stop()
        except Exception as exc:  # stopping must not hide the real error
            _log.warning("stopping NNI experiment %s failed: %s", exp.id, exc)
    atomic_write_text(os.path.join(out, "trial_jobs.json"), json.dumps(jobs, indent=1) + "\n")  # NNI's raw records
    history, best = write_results(out, jobs, setup, exp_dir)
    timings["total_s"] = time.perf_counter() - t0
    if history["seconds"].notna().any():
        timings["trial_wall_s"] = float(history["seconds"].median())
    result = ExperimentResult(history, best, exp.id, status, timings)
    result.setup, result.encoding = setup, encoding
    if status == "ERROR":
        raise UserError(f"NNI experiment {exp.id} ended in ERROR after {len(history)} trials (logs: "
                        f"{os.path.join(exp_dir, 'log')}; history kept in {os.path.join(out, 'history.csv')})")
    if status.startswith("TIMEOUT"):
        raise UserError(f"NNI experiment {exp.id}: {status} with {len(history)} trials; raise --timeout "
                        f"(history kept in {os.path.join(out, 'history.csv')})")
    return result


__all__ = ["run_experiment", "collect_history", "best_row", "closest_row", "default_trials", "free_port",
           "ExperimentResult", "TUNERS", "ORDINAL_TUNERS", "width_encoding"]
