"""What the real-data sources share: validating a dataset read from its annotations, then
decoding its images once into the cache (the same format as SynthScenes).

Every check that needs no decoding runs first, over all splits (empty splits, dense captions,
missing files); corrupt files are collected during decoding and reported together at its end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from core.config import DataConfig
from core.data._dense import RealSplit, match_dense
from core.data._images import Decoder, check_files_exist, check_inside_root
from core.data.cache import Split, SplitData, cache_side, materialize, open_splits, write_split
from core.errors import UserError

__all__ = ["build_real", "image_root", "real_cache_params", "first_captions", "EVAL_SPLITS"]

EVAL_SPLITS = ("val", "test")  # data.captions_per_image applies to these


def image_root(data: DataConfig) -> Path:
    """``data.image_root`` as an existing folder, or a UserError."""
    if data.image_root is None:
        raise UserError(f"data.image_root is required for source '{data.source}' (the folder of the image files)")
    root = Path(data.image_root)
    if not root.is_dir():
        raise UserError(f"data.image_root={data.image_root} is not a folder")
    return root


def build_real(
    data: DataConfig, cache_dir: Path, params: dict, read: Callable[[], dict[str, RealSplit]]
) -> dict[str, Split]:
    """Open a real dataset's cache, writing it first if absent.

    Args:
        data: the data section (source, image root, dense captions, cache side, workers).
        cache_dir: parent folder of the data caches.
        params: :func:`real_cache_params` of the source's annotation files: their sizes and
            times are part of the cache key, so an edited annotation file makes a new cache
            (edited image files do not: delete the cache).
        read: parses the annotations into splits ``train``, ``val``, ``test`` (called only when
            the cache must be written).
    """
    root = image_root(data)
    side = cache_side(data)
    folder = materialize(cache_dir, data.source, params, lambda tmp: _write(data, read(), root, side, tmp))
    return open_splits(folder)


def real_cache_params(data: DataConfig, inputs: list[Path]) -> dict:
    """What decides a real dataset's cache content, without reading it: the annotation and
    dense-caption files' paths, sizes and times, the image folder, the cached side, the caption
    limit. The cache key hashes it; so does a stage's hash (a rewritten file is new data).

    Args:
        data: the data section.
        inputs: the annotation files.
    """
    missing = [p for p in inputs if not Path(p).is_file()]
    if missing:
        raise UserError(f"data.annotations={data.annotations}: missing {', '.join(map(str, missing))}")
    return {
        "inputs": [_stat(p) for p in inputs],
        "image_root": str(image_root(data).resolve()),
        "dense_captions": _dense_params(data.dense_captions),
        "skip_missing_dense": data.skip_missing_dense,
        "side": cache_side(data),
        "captions_per_image": data.captions_per_image,
    }


def first_captions(split: RealSplit, k: int) -> RealSplit:
    """The split with each image's first ``k`` captions (in file order) and no others."""
    seen: dict[int, int] = {}
    keep = []
    for j, image in enumerate(split.caption_image):
        seen[image] = seen.get(image, 0) + 1
        if seen[image] <= k:
            keep.append(j)
    return dataclasses.replace(
        split, captions=[split.captions[j] for j in keep], caption_image=[split.caption_image[j] for j in keep]
    )


def _write(data: DataConfig, splits: dict[str, RealSplit], root: Path, side: int, folder: Path) -> None:
    empty = [name for name, s in splits.items() if not s.image_ids or not s.captions]
    if empty:
        raise UserError(f"{data.annotations}: empty splits (no images or no captions): {', '.join(empty)}")
    if data.captions_per_image is not None:  # the VSE protocol: k sentences per evaluation image
        splits = {n: first_captions(s, data.captions_per_image) if n in EVAL_SPLITS else s for n, s in splits.items()}
    if data.dense_captions is not None:
        splits = match_dense(data.dense_captions, splits, data.skip_missing_dense)
    check_inside_root({name: s.paths for name, s in splits.items()}, root)
    check_files_exist({name: s.paths for name, s in splits.items()}, root)
    decoder = Decoder(side, data.num_workers)
    for name, s in splits.items():
        write_split(folder / name, SplitData(s.image_ids, decoder.decode(s.paths), s.captions, s.caption_image, s.dense), side)
    decoder.raise_errors()


def _stat(path: Path) -> dict:
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _dense_params(pattern: str | None) -> dict | None:
    if pattern is None:
        return None
    path = Path(pattern)
    files = sorted(path.parent.glob(path.name.replace("{split}", "*"))) if "{split}" in pattern else [path]
    return {"pattern": pattern, "files": [_stat(p) for p in files if p.is_file()]}
