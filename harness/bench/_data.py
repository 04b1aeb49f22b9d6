"""Scaled-down SynthScenes splits, for benchmarks that time real stage runs in minutes."""

from __future__ import annotations

from collections.abc import Sequence

from core.config import Config
from core.errors import UserError

__all__ = ["SPLITS", "scaled_splits", "describe_splits"]

SPLITS = ("num_train", "num_val", "num_test")


def scaled_splits(config: Config, scale: float, splits: Sequence[str] = SPLITS, bench: str = "the benchmark") -> dict[str, int]:
    """``data.synthscenes.<split>`` overrides scaled by ``scale``: at least one batch of training
    images, and whole test folds.

    Args:
        config: the resolved config whose splits are scaled.
        scale: the share kept (0 < scale <= 1).
        splits: the splits scaled (the others keep their size).
        bench: the benchmark's name, for the error.
    """
    if not 0 < scale <= 1:
        raise UserError(f"{bench}: data_scale must be in (0, 1], got {scale}")
    if config.data.source != "synthscenes":
        raise UserError(f"{bench} scales SynthScenes splits; the config reads data.source={config.data.source}")
    sizes = config.data.synthscenes
    out = {f"data.synthscenes.{name}": max(1, round(getattr(sizes, name) * scale)) for name in splits}
    if "num_train" in splits:
        batch = max(config.pretrain.batch_size, config.finetune.batch_size)
        out["data.synthscenes.num_train"] = max(out["data.synthscenes.num_train"], batch)
    fold = config.eval.fold_size
    if fold and "num_test" in splits and sizes.num_test >= fold:  # k-fold testing: whole folds, at least one
        out["data.synthscenes.num_test"] = max(fold, out["data.synthscenes.num_test"] // fold * fold)
    return out


def describe_splits(values: dict[str, int]) -> str:
    """``num_train=125, num_test=200`` for notes."""
    return ", ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in values.items())
