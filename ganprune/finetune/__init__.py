"""Fine-tuning pruned G/D pairs: one trainer, many recipes (``RECIPES``; add one with ``@register_recipe``)."""
from ganprune.finetune.recipe import RECIPES, Recipe, get_recipe, register_recipe
from ganprune.finetune import recipes  # noqa: F401,E402  (registers the built-in recipes; any import of a
#                                        ganprune.finetune module runs this package first)
from ganprune.finetune.trainer import evaluate, finetune

__all__ = ["finetune", "evaluate", "Recipe", "RECIPES", "register_recipe", "get_recipe"]
