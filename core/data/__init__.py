"""Data: one module per source (``synthscenes``, ``karpathy``, ``laps``), all converted once to
the same uint8 cache format, and the training-time dataset and collator read from it."""

from core.data.augment import TokenAugment, eval_view, swap_left_right, train_view
from core.data.cache import ImageStore, Split, cache_side
from core.data.datasets import Collator, PairDataset, eval_images
from core.data.sources import SOURCES, build_splits, prepare

__all__ = [
    "SOURCES",
    "Split",
    "ImageStore",
    "build_splits",
    "prepare",
    "cache_side",
    "PairDataset",
    "Collator",
    "eval_images",
    "train_view",
    "eval_view",
    "swap_left_right",
    "TokenAugment",
]
