"""Per-architecture width choices (YAML), installed as ``ganprune.search_spaces``."""
