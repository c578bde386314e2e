"""Built-in pruning agents, installed as ``ganprune.agents``.

Every public module here is imported by ``ganprune.search.agent`` discovery and registers its agents with
``@register_agent``: ``greedy`` (NetAdapt-style), ``rl`` (REINFORCE policy), ``random`` (the baseline) and
``template`` (uniform scaling; the file to copy when writing an agent of your own).
"""
