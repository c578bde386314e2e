"""Datasets in the reference aligned/unaligned layouts, and the embedded real-photo demo set."""
from ganprune.data.datasets import DATASETS, AlignedDataset, UnalignedDataset, build_dataset
from ganprune.data.demo import make_demo

__all__ = ["DATASETS", "AlignedDataset", "UnalignedDataset", "build_dataset", "make_demo"]
