"""The data sources by name, and the entry points: ``build_splits``, ``prepare``, ``data_fingerprint``.

A source is a module with ``build(data, cache_dir) -> {split: Split}`` and ``cache_params(data)
-> dict`` (what decides its content, computed without decoding anything).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from core.config import DataConfig
from core.data import karpathy, laps, synthscenes
from core.data.cache import Split, cache_key, verify
from core.errors import UserError

__all__ = ["SOURCES", "build_splits", "prepare", "data_fingerprint"]

SOURCES: dict[str, ModuleType] = {
    "synthscenes": synthscenes,
    "karpathy": karpathy,
    "laps": laps,
}


def _source(data: DataConfig) -> ModuleType:
    try:
        return SOURCES[data.source]
    except KeyError:
        raise UserError(f"unknown data.source '{data.source}'; valid sources: {', '.join(SOURCES)}") from None


def build_splits(data: DataConfig, cache_dir: Path) -> dict[str, Split]:
    """The splits ``train``, ``val``, ``test`` of ``data.source``, cached on first use.

    Bad data (missing or corrupt images, unknown ids, empty splits, missing dense captions) is a
    UserError here, before any training.

    Args:
        data: the data section.
        cache_dir: parent folder of the data caches (one sub-folder per source and content key).
    """
    return _source(data).build(data, Path(cache_dir))


def data_fingerprint(data: DataConfig) -> str:
    """The key of the data cache ``data`` opens: a hash of what decides the splits' content
    (SynthScenes: its settings; real data: the annotation and dense-caption files' paths,
    sizes and times). Cheap (no image is decoded); a rewritten caption file changes it.

    Args:
        data: the data section.
    Raises:
        UserError: a missing annotation file or image folder, named with its key.
    """
    return cache_key(data.source, _source(data).cache_params(data))


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
