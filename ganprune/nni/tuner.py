"""Our collaborative G/D agents as an NNI tuner.

    CustomAlgorithmConfig(class_name="ganprune.nni.tuner.GanpruneTuner", code_directory=<dir holding ganprune>,
                          class_args={"config": "/abs/trial_config.yaml", "g_agent": "greedy", "d_agent": "greedy"})

Class arguments left out (all but ``config`` may be) are the config's. The agents are built as every
search builds them (``ganprune.search.setup.prepare``) and each call into them runs under the same guard
as in ``ganprune search`` (``ganprune.search.agent.call_agent``).

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

from ganprune.core.errors import UserError
from ganprune.core.guard import DEFAULT_TIMEOUT
from ganprune.search.agent import Feedback, call_agent
from ganprune.nni.space import metric_columns

_log = logging.getLogger("ganprune.nni.tuner")
REQUIRED = set(metric_columns())    # every metric a trial reports; what ``search._feedback`` reads


class GanpruneTuner(Tuner):
    """A G-agent and a D-agent exchanging peer feedback, driven by NNI trials."""

    def __init__(self, config: str, g_agent: str | None = None, d_agent: str | None = None,
                 agent_file: str | None = None, seed: int | None = None, g_agent_options: dict | None = None,
                 d_agent_options: dict | None = None):
        # NNI's dispatcher builds the tuner before it connects to the NNI manager, which gives it 10 s: the
        # teacher pair and its spaces (seconds on a busy machine) are built on first use instead. An
        # argument left out (None) is the config's.
        self._config = config
        self._given = {k: v for k, v in dict(g_agent=g_agent, d_agent=d_agent, agent_file=agent_file, seed=seed,
                                            g_agent_options=g_agent_options, d_agent_options=d_agent_options
                                            ).items() if v is not None}
        self._built = False
        self.g_peer: Feedback | None = None
        self.d_peer: Feedback | None = None
        self.pending: tuple[int, dict, dict] | None = None
        self.rounds = 0

    def _build(self) -> None:
        if self._built:
            return
        from ganprune.nni.space import Setup, load_options, search_space
        # spaces, budgets and agents as every search builds them; no evaluator in the tuner
        setup = Setup(load_options(self._config), calib_images=1, agents=True, **self._given)
        self.g_space, self.d_space = setup.g_space, setup.d_space
        self.g_budget, self.d_budget = setup.g_budget, setup.d_budget
        self.g_agent, self.d_agent = setup.g_agent, setup.d_agent     # d_agent None: G-only
        self.expected_space = search_space(self.g_space, self.d_space)
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
        g_widths = self._call(self.g_agent, "G", "ask()", lambda: self.g_agent.propose(self.d_peer))
        d_widths = (self._call(self.d_agent, "D", "ask()", lambda: self.d_agent.propose(self.g_peer))
                    if self.d_agent is not None else {})
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
        self._call(self.g_agent, "G", "tell()", lambda: self.g_agent.observe(g_fb))
        if self.d_agent is not None:
            self._call(self.d_agent, "D", "tell()", lambda: self.d_agent.observe(d_fb))
        self.g_peer, self.d_peer = g_fb, d_fb

    @staticmethod
    def _call(agent, role, what, fn):
        """An agent call under the guard, as in ``ganprune search`` (NNI options have no ``agent_timeout``:
        the default limit holds, so a hung agent fails the experiment instead of stalling it)."""
        return call_agent(agent, role, what, fn, DEFAULT_TIMEOUT)

    def import_data(self, data) -> None:
        """Results of earlier experiments cannot be replayed into sequential agents out of order: ignored."""
        _log.info("import_data ignored (%d records): agents learn only from their own proposals", len(data))


__all__ = ["GanpruneTuner"]
