"""The data sources by name, and the two entry points: ``build_splits`` and ``prepare``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from core.config import DataConfig
from core.data import karpathy, laps, synthscenes
from core.data.cache import Split, verify
from core.errors import UserError

__all__ = ["SOURCES", "build_splits", "prepare"]

Builder = Callable[[DataConfig, Path], dict[str, Split]]
SOURCES: dict[str, Builder] = {
    "synthscenes": synthscenes.build,
    "karpathy": karpathy.build,
    "laps": laps.build,
}


def build_splits(data: DataConfig, cache_dir: Path) -> dict[str, Split]:
    """The splits ``train``, ``val``, ``test`` of ``data.source``, cached on first use.

    Bad data (missing or corrupt images, unknown ids, empty splits, missing dense captions) is a
    UserError here, before any training.

    Args:
        data: the data section.
        cache_dir: parent folder of the data caches (one sub-folder per source and content key).
    """
    try:
        builder = SOURCES[data.source]
    except KeyError:
        raise UserError(f"unknown data.source '{data.source}'; valid sources: {', '.join(SOURCES)}") from None
    return builder(data, Path(cache_dir))


def prepare(data: DataConfig, cache_dir: Path) -> dict[str, Path]:
    """Write the cache if absent, then check every file against its recorded digest.

    Args:
        data: the data section.
        cache_dir: parent folder of the data caches.
    Returns:
        split name -> the split's cache folder.
    """
    splits = build_splits(data, cache_dir)
    folders = {name: split.images.path.parent for name, split in splits.items()}
    for root in {folder.parent for folder in folders.values()}:
        verify(root)
    return folders
