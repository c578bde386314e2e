"""Stage 3a: how good is a candidate pair without training it: the local-density objective, its kernels and
embeddings, and the candidate evaluator that instantiates and scores (G widths, D widths)."""
