"""Flickr30K / MS-COCO from the Karpathy split JSON (``dataset_flickr30k.json``, ``dataset_coco.json``).

``data.annotations`` is the JSON: ``{"images": [{"filename", "filepath"?, "split", "sentences":
[{"raw", "tokens"}], "imgid", "cocoid"?}]}``; ``data.image_root`` the folder the files are in
(``image_root/filepath/filename``; COCO's ``filepath`` is ``train2014`` or ``val2014``).
Splits as published: ``train`` (COCO: ``train`` + ``restval``, 113,287 images), ``val``,
``test`` (COCO: the 5K test; the 5-fold 1K protocol is the metrics' job). An image's id is
``filepath/filename`` (``filename`` when there is no ``filepath``); its captions are the
``raw`` sentences (the joined ``tokens`` where ``raw`` is absent).
"""

from __future__ import annotations

import json
from pathlib import Path

from core.config import DataConfig
from core.data._dense import RealSplit
from core.data._real import build_real, image_root, real_cache_params
from core.data.cache import Split
from core.errors import UserError
from core.files import read_utf8

__all__ = ["SPLIT_OF", "build", "cache_params", "read"]

SPLIT_OF = {"train": "train", "restval": "train", "val": "val", "test": "test"}  # JSON split -> ours
EXAMPLES = 5


def build(data: DataConfig, cache_dir: Path) -> dict[str, Split]:
    """Decode (first use) and open the Karpathy splits ``train``, ``val``, ``test``.

    Args:
        data: the data section; reads ``annotations``, ``image_root``, ``dense_captions``,
            ``skip_missing_dense``, ``image_size``, ``cache_margin``, ``num_workers``.
        cache_dir: parent folder of the data caches.
    """
    path = _annotations(data)
    return build_real(data, cache_dir, cache_params(data), lambda: read(path, image_root(data)))


def cache_params(data: DataConfig) -> dict:
    """What decides the splits' content (files' sizes and times; nothing is read)."""
    return real_cache_params(data, [_annotations(data)])


def _annotations(data: DataConfig) -> Path:
    path = Path(data.annotations)
    if not path.is_file():
        raise UserError(f"data.annotations={data.annotations}: file not found (a dataset_*.json of the Karpathy splits)")
    return path


def read(path: Path, root: Path) -> dict[str, RealSplit]:
    """Parse a Karpathy split JSON into splits (no image is opened).

    Args:
        path: the JSON file.
        root: the image folder.
    """
    try:
        images = json.loads(read_utf8(path, "data.annotations"))["images"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise UserError(f"{path}: not a Karpathy split JSON with an 'images' list ({err})") from None
    splits = {name: RealSplit(name, [], [], [], [], []) for name in ("train", "val", "test")}
    bad_split, no_captions, seen, repeated = [], [], set(), []
    for n, image in enumerate(images):
        name = SPLIT_OF.get(image.get("split"))
        if name is None or not image.get("filename"):
            bad_split.append(f"#{n} {image.get('filename')!r} split={image.get('split')!r}")
            continue
        rel = Path(image.get("filepath") or "") / image["filename"]
        image_id = rel.as_posix()
        if image_id in seen:
            repeated.append(image_id)
            continue
        seen.add(image_id)
        texts = [(s.get("raw") or " ".join(s.get("tokens", []))).strip() for s in image.get("sentences", [])]
        if not texts or not all(texts):
            no_captions.append(image_id)
            continue
        split = splits[name]
        index = len(split.image_ids)
        split.image_ids.append(image_id)
        split.paths.append(root / rel)
        split.keys.append({image_id, image["filename"], *(str(image[k]) for k in ("imgid", "cocoid") if k in image)})
        split.captions.extend(texts)
        split.caption_image.extend([index] * len(texts))
    problems = [
        (bad_split, f"images without a filename or with a split other than {'/'.join(SPLIT_OF)}"),
        (repeated, "images listed twice"),
        (no_captions, "images with no or empty captions"),
    ]
    for items, what in problems:
        if items:
            raise UserError(f"{path}: {len(items)} {what}: {', '.join(items[:EXAMPLES])}")
    return splits
