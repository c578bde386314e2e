"""NNI integration: search-space export, trial entry point, our agents as an NNI tuner, local experiments.

Inside this package every import is absolute (``import nni`` is the real NNI package, not this one).
``GanpruneTuner`` imports NNI's tuner base: import it from ``ganprune.nni.tuner``.
"""
from __future__ import annotations

from ganprune.nni.experiment import ExperimentResult, free_port, run_experiment
from ganprune.nni.space import export_search_space, from_params, search_space, to_params

__all__ = ["run_experiment", "ExperimentResult", "free_port", "export_search_space", "search_space", "to_params",
           "from_params"]
