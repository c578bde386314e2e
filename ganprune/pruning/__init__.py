"""Stage 2: which channels can go (torch-pruning's dependency graph → coupled groups → a search space with
exact costs), and removing them physically."""
