"""Stage 4: training. One trainer (device, AMP, DDP, exact resume, NaN recovery) runs every recipe: fine-tuning
a pruned pair, teacher training and the supernet. Importing this package registers the built-in recipes."""
from ganprune.train import recipes  # noqa: F401  (registers the built-in recipes)
