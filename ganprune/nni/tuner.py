"""Our collaborative G/D agents as an NNI tuner.

    CustomAlgorithmConfig(class_name="ganprune.nni.tuner.GanpruneTuner", code_directory=<dir holding ganprune>,
                          class_args={"config": "/abs/trial_config.yaml", "g_agent": "greedy", "d_agent": "greedy"})

Each NNI trial is one round of ``ganprune search``: the G-agent proposes with the D-agent's latest
feedback as its peer and vice versa (``generate_parameters``); the trial's final result is split into a
G feedback (``score_g``) and a D feedback (``score_d``) (``receive_trial_result``). A trial that fails,
or ends without reporting, is fed back as score ``inf`` (``trial_end``). Feasibility is judged here, from
the budgets in the config, exactly as the plain search does.

Agents are sequential (propose, then observe, then propose again). When NNI asks for a candidate while
the previous one is still running (``trialConcurrency`` > 1), the tuner declines that request (raises
``NoMoreTrialError`` for it): NNI then fills that slot no more, so the experiment runs one trial at a
time — the agents' order and results equal a ``ganprune search`` run with the same seed.
"""
from __future__ import annotations

import logging

import nni
from nni.tuner import Tuner

from ganprune.search.agent import Feedback, get_agent
from ganprune.core.errors import UserError
from ganprune.nni.space import metric_columns

_log = logging.getLogger("ganprune.nni.tuner")
REQUIRED = set(metric_columns())    # every metric a trial reports; what ``search._feedback`` reads


class GanpruneTuner(Tuner):
    """A G-agent and a D-agent exchanging peer feedback, driven by NNI trials."""

    def __init__(self, config: str, g_agent: str = "greedy", d_agent: str = "greedy", agent_file: str | None = None,
                 seed: int | None = None, g_agent_options: dict | None = None, d_agent_options: dict | None = None):
        # NNI's dispatcher builds the tuner before it connects to the NNI manager, which gives it 10 s: the
        # teacher pair and its spaces (seconds on a busy machine) are built on first use instead.
        self._args = (config, g_agent, d_agent, agent_file, seed, g_agent_options, d_agent_options)
        self._built = False
        self.g_peer: Feedback | None = None
        self.d_peer: Feedback | None = None
        self.pending: tuple[int, dict, dict] | None = None
        self.rounds = 0

    def _build(self) -> None:
        if self._built:
            return
        from ganprune.nni.space import Setup, load_options, search_space
        config, g_agent, d_agent, agent_file, seed, g_agent_options, d_agent_options = self._args
        o = load_options(config)
        setup = Setup(o, calib_images=1)     # spaces and budgets only: no evaluator in the tuner
        self.g_space, self.d_space = setup.g_space, setup.d_space
        self.g_budget, self.d_budget = setup.g_budget, setup.d_budget
        self.expected_space = search_space(self.g_space, self.d_space)
        seed = o["seed"] if seed is None else int(seed)
        agent_file = agent_file or o["agent_file"]
        self.g_agent = get_agent(g_agent, agent_file)(self.g_space, self.g_budget, seed=seed, role="G",
                                                      **(g_agent_options or {}))
        self.d_agent = (get_agent(d_agent, agent_file)(self.d_space, self.d_budget, seed=seed + 1, role="D",
                                                       **(d_agent_options or {}))
                        if self.d_space is not None else None)    # G-only: no D-agent
        self._built = True

    def update_search_space(self, search_space) -> None:
        """NNI sends the experiment's search space; it must be the one exported from the same config."""
        self._build()
        if search_space != self.expected_space:
            raise UserError("the NNI search space differs from the one built from the tuner's config; export it "
                            "with `ganprune nni space --config` from the same config (--encoding choice: our "
                            "agents propose widths)")

    def generate_parameters(self, parameter_id, **kwargs):
        from ganprune.nni.space import to_params
        self._build()
        if self.pending is not None:
            _log.info("parameter %s declined: trial for parameter %s still running (agents are sequential)",
                      parameter_id, self.pending[0])
            raise nni.NoMoreTrialError("the agents wait for the running trial's result")
        g_widths = self.g_agent.propose(self.d_peer)
        d_widths = self.d_agent.propose(self.g_peer) if self.d_agent is not None else {}
        self.pending = (parameter_id, g_widths, d_widths)
        return to_params(g_widths, d_widths)

    def receive_trial_result(self, parameter_id, parameters, value, **kwargs):
        if self.pending is None or self.pending[0] != parameter_id:
            _log.warning("result for parameter %s ignored: it is not the pending proposal", parameter_id)
            return
        if not isinstance(value, dict) or not REQUIRED <= set(value):
            _log.warning("result for parameter %s lacks ganprune metrics; treated as failed", parameter_id)
            value = None
        self._observe(value)

    def trial_end(self, parameter_id, success, **kwargs):
        if self.pending is not None and self.pending[0] == parameter_id:
            if success:
                _log.warning("trial for parameter %s ended without a final result; treated as failed", parameter_id)
            self._observe(None)

    def _observe(self, value: dict | None) -> None:
        """Feed both agents exactly the feedback ``ganprune search`` would give them for this round."""
        from ganprune.search.loop import _feedback
        _, g_widths, d_widths = self.pending
        self.pending = None
        self.rounds += 1
        g_ok = value is not None and value["g_macs"] <= self.g_budget
        d_ok = value is not None and value["d_macs"] <= self.d_budget
        g_fb = _feedback(g_widths, value, "G", g_ok)
        d_fb = _feedback(d_widths, value, "D", d_ok)
        self.g_agent.observe(g_fb)
        if self.d_agent is not None:
            self.d_agent.observe(d_fb)
        self.g_peer, self.d_peer = g_fb, d_fb

    def import_data(self, data) -> None:
        """Results of earlier experiments cannot be replayed into sequential agents out of order: ignored."""
        _log.info("import_data ignored (%d records): agents learn only from their own proposals", len(data))


__all__ = ["GanpruneTuner"]
