"""Data: one module per source (``synthscenes``, ``karpathy``, ``laps``), all converted once to
the same uint8 cache format, and the training-time dataset and collator read from it.

The public names are loaded on first use (PEP 562): importing the package does not import the
source modules, so ``python -m core.data.synthscenes`` runs that module once, as ``__main__``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.data.augment import TokenAugment, eval_view, swap_left_right, train_view
    from core.data.cache import ImageStore, Split, cache_side
    from core.data.datasets import Collator, PairDataset, eval_images
    from core.data.sources import SOURCES, build_splits, data_fingerprint, prepare

_EXPORTS = {
    "SOURCES": "core.data.sources",
    "build_splits": "core.data.sources",
    "prepare": "core.data.sources",
    "data_fingerprint": "core.data.sources",
    "Split": "core.data.cache",
    "ImageStore": "core.data.cache",
    "cache_side": "core.data.cache",
    "PairDataset": "core.data.datasets",
    "Collator": "core.data.datasets",
    "eval_images": "core.data.datasets",
    "train_view": "core.data.augment",
    "eval_view": "core.data.augment",
    "swap_left_right": "core.data.augment",
    "TokenAugment": "core.data.augment",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'core.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
