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
import types as _types

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
# The public names load on first use (PEP 562), so ``import ganprune`` (and the CLI) does not import torch:
# the CLI sets OpenMP's thread settings first, which only take effect before torch loads.
_PUBLIC = {"export_onnx": "ganprune.export", "finetune": "ganprune.finetune", "Agent": "ganprune.agent",
           "Feedback": "ganprune.agent", "available_agents": "ganprune.agent", "get_agent": "ganprune.agent",
           "make_agent": "ganprune.agent", "register_agent": "ganprune.agent",
           "LocalDensityObjective": "ganprune.objective", "allow_arch": "ganprune.models",
           "load_discriminator": "ganprune.models", "load_generator": "ganprune.models",
           "save_checkpoint": "ganprune.models", "run_pipeline": "ganprune.pipeline", "load_pruned": "ganprune.prune",
           "prune": "ganprune.prune", "save_pruned": "ganprune.prune",
           "pruned_info": "ganprune.prune", "PrunedInfo": "ganprune.prune", "Group": "ganprune.space",
           "SearchSpace": "ganprune.space", "load_teacher": "ganprune.teacher", "train_teacher": "ganprune.teacher"}


class _Package(_types.ModuleType):
    """``ganprune.prune`` and ``ganprune.finetune`` are the functions, as they always were, not the
    submodules of the same name that the import system binds on the package when it loads them."""

    def __setattr__(self, name, value):
        if name in ("prune", "finetune") and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package


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
