"""Built-in pruning agents, installed as ``ganprune.agents``."""
