"""ganprune: make Pix2Pix / CycleGAN generators small and fast.

The pipeline, in the order it runs: load a checkpoint (``ganprune.models``) → build the search space
(``ganprune.space``) → let a G-agent and a D-agent search widths (``ganprune.search``) scored by the
local-density objective (``ganprune.objective``, ``ganprune.scoring``) → prune physically
(``ganprune.prune``) → fine-tune (``ganprune.finetune``) → measure and export (``ganprune.metrics``,
``ganprune.evaluation``, ``ganprune.export``).
"""
import importlib.util as _util
import os as _os
import sys as _sys

from ganprune.errors import UserError


def _beside_the_package(name: str) -> None:
    """In a source checkout ``agents/`` and ``search_spaces/`` sit beside this folder, not in it (an
    installed copy has them inside, via setuptools' package_dir): load them as ``ganprune.<name>``."""
    here = _os.path.dirname(_os.path.abspath(__file__))
    folder = _os.path.join(_os.path.dirname(here), name)
    init = _os.path.join(folder, "__init__.py")
    if _os.path.isdir(_os.path.join(here, name)) or f"ganprune.{name}" in _sys.modules or not _os.path.exists(init):
        return        # installed, already loaded, or missing (the import that needs it says so)
    spec = _util.spec_from_file_location(f"ganprune.{name}", init, submodule_search_locations=[folder])
    module = _util.module_from_spec(spec)
    _sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    globals()[name] = module


_beside_the_package("agents")
_beside_the_package("search_spaces")
from ganprune.export import export_onnx
from ganprune.finetune import finetune
from ganprune.agent import Agent, Feedback, available_agents, get_agent, make_agent, register_agent
from ganprune.objective import LocalDensityObjective
from ganprune.models import allow_arch, load_discriminator, load_generator, save_checkpoint
from ganprune.pipeline import run_pipeline
from ganprune.prune import load_pruned, prune, save_pruned
from ganprune.space import Group, SearchSpace
from ganprune.teacher import load_teacher, train_teacher

__version__ = "0.1.0"

__all__ = ["UserError", "allow_arch", "load_generator", "load_discriminator", "save_checkpoint", "SearchSpace", "Group", "prune",
           "save_pruned", "load_pruned", "Agent", "Feedback", "register_agent", "get_agent", "make_agent",
           "available_agents", "LocalDensityObjective", "train_teacher", "load_teacher", "export_onnx",
           "finetune", "run_pipeline", "__version__"]
