"""ganprune: make Pix2Pix / CycleGAN generators small and fast.

The subpackages are the pipeline's stages, in the order it runs: ``models`` (load a checkpoint) →
``pruning`` (dependency graph, search space, physical pruning) → ``scoring`` (the local-density objective,
candidate scores) → ``search`` (agents, budgets, supernet, the collaborative loop) → ``train`` (one trainer,
every recipe, the teacher) → ``metrics`` and ``evaluation`` (cost and quality) → ``deploy`` (ONNX and edge
runtimes) → ``report``. ``core`` holds what they all stand on (options, errors, files, plugins); ``pipeline``
runs the stages in order, resumably; ``nni`` runs the search as an NNI experiment; ``cli`` is the command line.
This module lists the public API: each name once, loaded on first use.
"""
from ganprune.core.errors import UserError

# The public names load on first use (PEP 562), so ``import ganprune`` (and the CLI) does not import torch:
# the CLI sets OpenMP's thread settings first, which only take effect before torch loads.
_PUBLIC = {"export_onnx": "ganprune.deploy.export", "finetune": "ganprune.train.trainer", "Agent": "ganprune.search.agent",
           "Feedback": "ganprune.search.agent", "available_agents": "ganprune.search.agent", "get_agent": "ganprune.search.agent",
           "make_agent": "ganprune.search.agent", "register_agent": "ganprune.search.agent",
           "LocalDensityObjective": "ganprune.scoring.objective", "allow_arch": "ganprune.models.registry",
           "load_discriminator": "ganprune.models.checkpoint", "load_generator": "ganprune.models.checkpoint",
           "save_checkpoint": "ganprune.models.checkpoint", "run_pipeline": "ganprune.pipeline", "load_pruned": "ganprune.pruning.physical",
           "prune": "ganprune.pruning.physical", "save_pruned": "ganprune.pruning.physical",
           "pruned_info": "ganprune.pruning.physical", "PrunedInfo": "ganprune.pruning.physical", "Group": "ganprune.pruning.space",
           "SearchSpace": "ganprune.pruning.space", "load_teacher": "ganprune.train.teacher", "train_teacher": "ganprune.train.teacher"}


def __getattr__(name: str):
    if name in _PUBLIC:
        import importlib
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ganprune' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))


__version__ = "0.1.0"

__all__ = ["UserError", "allow_arch", "load_generator", "load_discriminator", "save_checkpoint", "SearchSpace", "Group", "prune",
           "save_pruned", "load_pruned", "pruned_info", "PrunedInfo", "Agent", "Feedback", "register_agent", "get_agent", "make_agent",
           "available_agents", "LocalDensityObjective", "train_teacher", "load_teacher", "export_onnx",
           "finetune", "run_pipeline", "__version__"]
