"""The VSE/LAPS layout (VSE++, VSE-infinity, LAPS, D2S-VSE): per split ``{split}_caps.txt`` (one
caption per line) and ``{split}_ids.txt`` (one integer image id per line), and ``id_mapping.json``
(``{"<id>": "<path relative to the image folder>"}``, e.g. ``{"0": "1000092795.jpg"}``).

``data.annotations`` is the folder of these files, ``data.image_root`` the image folder.
``{split}_ids.txt`` has either one line per caption (each caption's image) or one line per image
with ``k`` consecutive captions each (the VSE code's ``im_div``); both are read. Images are
listed in order of first appearance. File splits -> ours: ``train`` -> train, ``dev`` -> val,
``testall`` (COCO's 5K test) or else ``test`` -> test. The released D2S-VSE data ships no
``dev`` for Flickr30K (the authors select on test); here val is required, so add a ``dev`` split.
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

__all__ = ["SPLIT_FILES", "build", "cache_params", "read", "split_file_names"]

SPLIT_FILES = {"train": ("train",), "val": ("dev",), "test": ("testall", "test")}  # first present wins
MAPPING = "id_mapping.json"
EXAMPLES = 5


def build(data: DataConfig, cache_dir: Path) -> dict[str, Split]:
    """Decode (first use) and open the LAPS-layout splits ``train``, ``val``, ``test``.

    Args:
        data: the data section; reads ``annotations`` (the folder), ``image_root``,
            ``dense_captions``, ``skip_missing_dense``, ``image_size``, ``cache_margin``, ``num_workers``.
        cache_dir: parent folder of the data caches.
    """
    folder, names = _files(data)
    return build_real(data, cache_dir, cache_params(data), lambda: read(folder, names, image_root(data)))


def cache_params(data: DataConfig) -> dict:
    """What decides the splits' content (files' sizes and times; nothing is read)."""
    folder, names = _files(data)
    inputs = [folder / MAPPING] + [folder / f"{n}_{kind}.txt" for n in names.values() for kind in ("caps", "ids")]
    return real_cache_params(data, inputs)


def _files(data: DataConfig) -> tuple[Path, dict[str, str]]:
    folder = Path(data.annotations)
    if not folder.is_dir():
        raise UserError(f"data.annotations={data.annotations}: not a folder (the LAPS layout: {{split}}_caps.txt, ...)")
    return folder, split_file_names(folder)


def split_file_names(folder: Path) -> dict[str, str]:
    """Our split -> its name in the files (``val`` -> ``dev``); a UserError lists what is missing."""
    names, missing = {}, []
    for split, candidates in SPLIT_FILES.items():
        present = [c for c in candidates if (folder / f"{c}_caps.txt").is_file() and (folder / f"{c}_ids.txt").is_file()]
        if present:
            names[split] = present[0]
        else:
            missing.append(" or ".join(f"{c}_caps.txt + {c}_ids.txt" for c in candidates))
    if not (folder / MAPPING).is_file():
        missing.append(MAPPING)
    if missing:
        raise UserError(f"{folder}: missing {'; '.join(missing)}")
    return names


def read(folder: Path, names: dict[str, str], root: Path) -> dict[str, RealSplit]:
    """Parse the caption, id and mapping files into splits (no image is opened).

    Args:
        folder: the annotations folder.
        names: our split -> file split name (:func:`split_file_names`).
        root: the image folder.
    """
    try:
        mapping = {str(k): str(v) for k, v in json.loads(read_utf8(folder / MAPPING, "data.annotations")).items()}
    except (json.JSONDecodeError, AttributeError) as err:
        raise UserError(f"{folder / MAPPING}: not a JSON object of id -> path ({err})") from None
    splits, unknown = {}, []
    for split, name in names.items():
        captions = _lines(folder / f"{name}_caps.txt")
        ids = [_normalise(i) for i in _lines(folder / f"{name}_ids.txt")]
        per_caption = _caption_ids(captions, ids, folder, name)
        unknown += [f"{name}_ids.txt:{n} id {i}" for n, i in enumerate(ids, start=1) if i not in mapping]
        empty = [str(n) for n, text in enumerate(captions, start=1) if not text]
        if empty:
            raise UserError(f"{folder / f'{name}_caps.txt'}: {len(empty)} empty captions (lines {', '.join(empty[:EXAMPLES])})")
        order = list(dict.fromkeys(per_caption))  # images in order of first appearance
        index = {image: i for i, image in enumerate(order)}
        splits[split] = RealSplit(
            file_name=name,
            image_ids=order,
            paths=[root / mapping.get(i, "") for i in order],
            keys=[{i, mapping.get(i, i), Path(mapping.get(i, i)).name} for i in order],
            captions=captions,
            caption_image=[index[i] for i in per_caption],
        )
    if unknown:
        raise UserError(f"{folder}: {len(unknown)} id lines name images not in {MAPPING}: {', '.join(unknown[:EXAMPLES])}")
    return splits


def _lines(path: Path) -> list[str]:
    lines = [line.strip() for line in read_utf8(path, "data.annotations").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _normalise(image_id: str) -> str:
    # the VSE code reads ids with int(); id_mapping.json's keys are str(int)
    try:
        return str(int(image_id))
    except ValueError:
        return image_id


def _caption_ids(captions: list[str], ids: list[str], folder: Path, name: str) -> list[str]:
    """Each caption's image id, from one id per caption or one id per k consecutive captions."""
    if len(ids) == len(captions):
        return ids
    if ids and len(captions) % len(ids) == 0:
        k = len(captions) // len(ids)
        return [i for i in ids for _ in range(k)]
    raise UserError(
        f"{folder}: {name}_caps.txt has {len(captions)} lines and {name}_ids.txt {len(ids)}; expected one id per"
        " caption or per k consecutive captions"
    )
