"""Fine-tuning pruned G/D pairs: one trainer, many recipes (``RECIPES``; add one with ``@register_recipe``)."""
from ganprune.finetune.recipe import RECIPES, Recipe, get_recipe, register_recipe
from ganprune.finetune.trainer import evaluate, finetune

__all__ = ["finetune", "evaluate", "Recipe", "RECIPES", "register_recipe", "get_recipe"]
