"""``ganprune nni collect``: an NNI experiment, finished or not, run by ``ganprune nni run`` or by
``nnictl create``, back as ``history.csv`` and ``widths.yaml`` — read from the experiment's own database
(``<experiment dir>/<id>/db/nni.sqlite``, opened read-only), so no NNI server needs to run.

The database holds trial events and metrics; they are replayed into the same trial records NNI's REST
server gives (``/trial-jobs``), and those go through ``experiment.collect_history`` like a live run's.
"""
from __future__ import annotations

import json
import os
import sqlite3
from typing import Mapping

from ganprune.core.errors import UserError

FINISHED = ("SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED")


def experiment_db(experiment_id: str, experiment_dir=None) -> str:
    """The path of an experiment's database; one line when there is none."""
    if not experiment_id or not all(c.isalnum() or c in "-_" for c in experiment_id):
        raise UserError(f"experiment id {experiment_id!r}: expected the id nnictl prints (letters and digits)")
    root = os.path.expanduser(os.fspath(experiment_dir or "~/nni-experiments"))
    path = os.path.join(root, experiment_id, "db", "nni.sqlite")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no NNI experiment {experiment_id} here; give --experiment-dir (the experiment's "
                        "working directory, e.g. OUT/nni-experiments for `ganprune nni run`)")
    return path


def read_trial_jobs(db_path: str) -> list[dict]:
    """Trial records as NNI's REST ``/trial-jobs`` gives them (status, sequenceId, hyperParameters,
    finalMetricData, startTime, endTime), replayed from the database's events."""
    try:
        con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            events = con.execute("select timestamp, trialJobId, event, data, sequenceId from TrialJobEvent "
                                 "order by rowid").fetchall()
            metrics = con.execute("select trialJobId, parameterId, type, data from MetricData where type = 'FINAL' "
                                  "order by rowid").fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise UserError(f"{db_path}: cannot read this NNI database ({exc})") from None
    jobs: dict[str, dict] = {}
    for timestamp, trial, event, data, sequence in events:
        if not trial:
            continue
        job = jobs.setdefault(trial, {"trialJobId": trial, "status": "UNKNOWN", "hyperParameters": []})
        if event in ("WAITING", "RUNNING") and "startTime" not in job and timestamp is not None:
            job["startTime"] = timestamp
        if event == "RUNNING" and timestamp is not None:
            job["startTime"] = timestamp
        if event in FINISHED:
            job["endTime"] = timestamp
        job["status"] = {"USER_TO_CANCEL": "USER_CANCELED", "ADD_CUSTOMIZED": "WAITING"}.get(
            event, job["status"] if event == "ADD_HYPERPARAMETER" else event)
        if data and data.strip():
            try:
                index = json.loads(data).get("parameter_index")
            except (ValueError, AttributeError):
                index = None
            if index not in [json.loads(h).get("parameter_index") for h in job["hyperParameters"]]:
                job["hyperParameters"].append(data)
        if sequence is not None and "sequenceId" not in job:
            job["sequenceId"] = sequence
    for trial, parameter, kind, data in metrics:
        if trial in jobs and jobs[trial]["status"] == "SUCCEEDED" and "finalMetricData" not in jobs[trial]:
            jobs[trial]["finalMetricData"] = [{"type": kind, "parameterId": parameter, "data": data}]
    return list(jobs.values())


def collect_experiment(values: Mapping, experiment_id: str, out, experiment_dir=None):
    """``(history, best, setup)`` of the experiment, written to ``out`` (history.csv, widths.yaml when a
    trial fits both budgets). ``values``: the ``ganprune nni`` options the trials ran with."""
    from ganprune.nni.experiment import write_results
    from ganprune.nni.space import Setup
    db = experiment_db(experiment_id, experiment_dir)
    setup = Setup(values, calib_images=1)
    jobs = read_trial_jobs(db)
    if not jobs:
        raise UserError(f"{db}: experiment {experiment_id} has no trials yet")
    history, best = write_results(out, jobs, setup, os.path.dirname(os.path.dirname(db)))
    return history, best, setup
