"""NNI integration: search-space export, trial entry point, our agents as an NNI tuner, local experiments.

Inside this package every import is absolute (``import nni`` is the real NNI package, not this one).
``GanpruneTuner`` imports NNI's tuner base: import it from ``ganprune.nni.tuner``.
"""
