"""ganprune: make Pix2Pix / CycleGAN generators small and fast.

The pipeline, in the order it runs: load a checkpoint (``ganprune.models``) → build the search space
(``ganprune.space``) → let a G-agent and a D-agent search widths (``ganprune.search``) scored by the
local-density objective (``ganprune.objective``) → prune physically (``ganprune.prune``) →
fine-tune (``ganprune.finetune``) → measure and export (``ganprune.metrics``, ``ganprune.export``).
"""
from ganprune.errors import UserError
from ganprune.models import load_discriminator, load_generator, save_checkpoint

__version__ = "0.1.0"

__all__ = ["UserError", "load_generator", "load_discriminator", "save_checkpoint", "__version__"]
