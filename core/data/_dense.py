"""Dense captions for real datasets: reading the JSONL and matching its lines to images.

``data.dense_captions`` is a JSONL file, one object per image with the caption under ``text``
(the authors' lines, ``{"text", "model_id", "metadata"}``, are accepted as they are). A line is
matched to its image in one of two ways, decided per file:

* keyed: every line has one of the keys ``image``, ``image_id`` or ``filename``, whose value names
  the image by its id, file name or path (as listed by the source: Karpathy ``filename``,
  ``filepath/filename``, ``imgid``, ``cocoid``; LAPS the id of ``{split}_ids.txt`` and its
  ``id_mapping.json`` path or file name). Keyed lines may cover any splits.
* by line order: no line has such a key; line k is image k of the split, in the order the source
  lists that split's images (Karpathy: the JSON's order; LAPS: ``{split}_ids.txt``, which is the
  order of the D2S-VSE authors' ``f30k_train.jsonl``). A single file is the train split's.

If the path contains ``{split}``, it is formatted with each split's file name (Karpathy ``train``,
``val``, ``test``; LAPS ``train``, ``dev``, ``test``/``testall``), one file per split, e.g.
``data/f30k/f30k_{split}.jsonl``; a split whose file is absent has no dense captions.

Training reads dense captions of the train split only, so the train split must have one per image
(else a UserError names the missing ones, or with ``data.skip_missing_dense`` those images are
dropped). Validation and test splits keep dense captions only when every image has one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import UserError
from core.files import read_utf8

__all__ = ["KEYS", "RealSplit", "match_dense", "dense_files"]

KEYS = ("image", "image_id", "filename")  # line keys naming the image, tried in this order
EXAMPLES = 5
log = logging.getLogger(__name__)


@dataclass
class RealSplit:
    """A real-data split as read from its annotations, before decoding."""

    file_name: str  # the split's name in the source's files (LAPS "dev" for val)
    image_ids: list[str]
    paths: list[Path]
    keys: list[set[str]]  # per image: every string a dense-caption line may name it by
    captions: list[str]
    caption_image: list[int]
    dense: list[str] | None = field(default=None)


def dense_files(pattern: str, splits: dict[str, RealSplit]) -> dict[str, Path]:
    """Split name -> its dense-caption file (only files that exist, except a plain path)."""
    if "{split}" not in pattern:
        return {"*": Path(pattern)}
    paths = {name: Path(pattern.format(split=s.file_name)) for name, s in splits.items()}
    return {name: path for name, path in paths.items() if path.is_file()}


def match_dense(pattern: str, splits: dict[str, RealSplit], skip_missing: bool) -> dict[str, RealSplit]:
    """Attach dense captions to the splits (see the module docstring for the rules).

    Args:
        pattern: ``data.dense_captions``.
        splits: the splits read from the annotations; ``train`` among them.
        skip_missing: drop train images without a dense caption instead of failing.
    Returns:
        the splits, with ``dense`` set where complete (train: always, or an error).
    """
    found: dict[str, list[str | None]] = {name: [None] * len(s.image_ids) for name, s in splits.items()}
    files = dense_files(pattern, splits)
    if "train" not in files and "*" not in files:
        raise UserError(f"data.dense_captions: no file for the train split ({pattern.format(split=splits['train'].file_name)})")
    for name, path in files.items():
        lines = _read_lines(path)
        keyed = _keyed(lines, path)
        targets = splits if name == "*" else {name: splits[name]}
        if keyed:
            _match_by_key(lines, path, targets, found)
        else:
            _match_by_order(lines, path, "train" if name == "*" else name, splits, found)
    return {name: _attach(name, split, found[name], pattern, skip_missing) for name, split in splits.items()}


def _read_lines(path: Path) -> list[tuple[int, dict]]:
    if not path.is_file():
        raise UserError(f"data.dense_captions: file not found: {path}")
    lines, bad = [], []
    for number, raw in enumerate(read_utf8(path, "data.dense_captions").split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as err:
            bad.append(f"line {number} ({err.msg})")
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"].strip():
            bad.append(f"line {number} (no non-empty 'text')")
            continue
        lines.append((number, obj))
    if bad:
        raise UserError(f"data.dense_captions {path}: {len(bad)} bad lines: {', '.join(bad[:EXAMPLES])}")
    return lines


def _keyed(lines: list[tuple[int, dict]], path: Path) -> bool:
    has_key = [any(k in obj for k in KEYS) for _, obj in lines]
    if any(has_key) and not all(has_key):
        first = next(n for (n, _), k in zip(lines, has_key) if not k)
        raise UserError(f"data.dense_captions {path}: some lines name their image ({'/'.join(KEYS)}) and some do not (line {first})")
    return bool(has_key) and all(has_key)


def _match_by_key(lines, path: Path, targets: dict[str, RealSplit], found: dict[str, list]) -> None:
    where = {key: (name, i) for name, s in targets.items() for i, keys in enumerate(s.keys) for key in keys}
    unknown, repeated = [], []
    for number, obj in lines:
        key = str(next(obj[k] for k in KEYS if k in obj))
        if key not in where:
            unknown.append(f"{key!r} (line {number})")
            continue
        name, i = where[key]
        if found[name][i] is not None:
            repeated.append(f"{key!r} (line {number})")
        found[name][i] = obj["text"]
    if unknown:
        raise UserError(f"data.dense_captions {path}: {len(unknown)} lines name unknown images: {', '.join(unknown[:EXAMPLES])}")
    if repeated:
        raise UserError(f"data.dense_captions {path}: {len(repeated)} images have more than one line: {', '.join(repeated[:EXAMPLES])}")


def _match_by_order(lines, path: Path, name: str, splits: dict[str, RealSplit], found: dict[str, list]) -> None:
    count = len(splits[name].image_ids)
    if len(lines) != count:
        raise UserError(
            f"data.dense_captions {path}: its lines name no image ({'/'.join(KEYS)}), so line k is image k of the"
            f" {name} split, but it has {len(lines)} lines for {count} images"
        )
    found[name] = [obj["text"] for _, obj in lines]


def _attach(name: str, split: RealSplit, dense: list[str | None], pattern: str, skip_missing: bool) -> RealSplit:
    missing = [i for i, text in enumerate(dense) if text is None]
    if not missing:
        split.dense = dense
        return split
    if name != "train":
        return split  # not used in training; kept only when complete
    if not skip_missing:
        examples = ", ".join(split.image_ids[i] for i in missing[:EXAMPLES])
        raise UserError(
            f"dense captions missing for {len(missing)} of {len(dense)} train images in {pattern}: {examples}"
            f"{', ...' if len(missing) > EXAMPLES else ''}; set data.skip_missing_dense=true to drop those images"
        )
    keep = [i for i, text in enumerate(dense) if text is not None]
    if not keep:
        raise UserError(f"no train image has a dense caption in {pattern}")
    log.warning("data.skip_missing_dense: dropped %d of %d train images without a dense caption", len(missing), len(dense))
    new_index = {old: new for new, old in enumerate(keep)}
    pairs = [(new_index[i], c) for i, c in zip(split.caption_image, split.captions) if i in new_index]
    return RealSplit(
        file_name=split.file_name,
        image_ids=[split.image_ids[i] for i in keep],
        paths=[split.paths[i] for i in keep],
        keys=[split.keys[i] for i in keep],
        captions=[c for _, c in pairs],
        caption_image=[i for i, _ in pairs],
        dense=[dense[i] for i in keep],
    )
