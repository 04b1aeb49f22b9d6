"""The on-disk format every source is converted to, and the memory-mapped image store read from it.

One folder per source and cache key, one sub-folder per split::

    {cache_dir}/{source}-{key}/manifest.json         key parameters; per split: file digests, fingerprint
    {cache_dir}/{source}-{key}/{split}/images.u8      uint8 (N, S, S, 3), C order, no header
    {cache_dir}/{source}-{key}/{split}/index.json     {"image_ids": [...], "shape": [N, S, S, 3]}
    {cache_dir}/{source}-{key}/{split}/captions.jsonl {"image": i, "text": ...}, one per sparse caption
    {cache_dir}/{source}-{key}/{split}/dense.jsonl    {"image": i, "text": ...}, one per image (if any)

``key`` hashes the source name, the format version and the parameters that decide the content (the
source's config, the cached side ``S``, the input files' sizes and times). A cache is written once
into a temporary folder and renamed into place, so it exists whole or not at all; an interrupted
write leaves only a temporary folder that no reader opens.

Images are stored square and whole: the full field of view resized (bicubic, antialiased) to
``S x S``, the aspect ratio given up as the released code does (its evaluation resizes the whole
image to a square; its training crops the same share of both sides of the whole image, then
resizes to a square, which equals cropping that share of the stored square). Nothing is cut off,
so an object at the edge of a 500 x 375 Flickr30K image is still in the evaluation view.
``S = ceil(data.image_size * data.cache_margin)``: the margin gives random crops resolution to
spare, and the evaluation view is the whole cached square resized to ``image_size``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from core.config import DataConfig
from core.errors import UserError

__all__ = [
    "FORMAT_VERSION",
    "ImageStore",
    "Split",
    "SplitData",
    "cache_side",
    "fit_square",
    "cache_key",
    "materialize",
    "write_split",
    "open_splits",
    "verify",
]

FORMAT_VERSION = 2  # bump when the layout or the image fitting changes: old caches are not reused
MANIFEST = "manifest.json"
SPLIT_FILES = ("images.u8", "index.json", "captions.jsonl", "dense.jsonl")
SPLIT_ORDER = ("train", "val", "test")  # the order splits are listed in; other names follow


class ImageStore:
    """The uint8 images of one split, memory-mapped: ``len(store)`` and ``store[i] -> (S, S, 3)``.

    The map is opened lazily, once per process (nanoGPT re-creates its memmap for the same
    reason): a DataLoader worker receives the store pickled as just its path and shape, and maps
    the file itself, so workers share the OS page cache instead of copying arrays.
    """

    def __init__(self, path: Path, shape: tuple[int, int, int, int]):
        self.path = Path(path)
        self.shape = tuple(shape)
        self._map: np.memmap | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        if not -len(self) <= index < len(self):
            raise IndexError(f"image {index} out of range for {len(self)} images")
        # a copy: callers may write to it, and tensors built on a read-only map warn
        return np.array(self._array()[index])

    def _array(self) -> np.memmap:
        if self._map is None or self._pid != os.getpid():
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r", shape=self.shape)
            self._pid = os.getpid()
        return self._map

    def __getstate__(self) -> dict:
        return {"path": self.path, "shape": self.shape}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["shape"])

    def __repr__(self) -> str:
        return f"ImageStore({str(self.path)!r}, shape={self.shape})"


@dataclass(frozen=True, eq=False)
class Split:
    """One split, opened from the cache.

    ``captions`` are the sparse captions, ``caption_image[j]`` the image index of caption ``j``,
    ``dense`` one dense caption per image (or None), ``fingerprint`` a hash of the split's files.
    """

    name: str
    images: ImageStore
    image_ids: list[str]
    captions: list[str]
    caption_image: np.ndarray
    dense: list[str] | None
    fingerprint: str


@dataclass
class SplitData:
    """What a source hands the writer for one split; ``images`` yields the N fitted uint8
    ``(S, S, 3)`` arrays in ``image_ids`` order (lazily, so a large split is never in memory)."""

    image_ids: list[str]
    images: Iterable[np.ndarray]
    captions: list[str]
    caption_image: list[int]
    dense: list[str] | None = None


def cache_side(data: DataConfig) -> int:
    """The cached square side ``S = ceil(image_size * cache_margin)`` (rounded first, so that
    float noise such as 229.99999999999997 does not change it)."""
    return math.ceil(round(data.image_size * data.cache_margin, 6))


def fit_square(image: Image.Image | np.ndarray, side: int) -> np.ndarray:
    """Resize the whole image to ``side x side`` (bicubic, antialiased; the aspect ratio is not
    kept, nothing is cropped).

    Args:
        image: a PIL image (any mode, converted to RGB) or a uint8 ``(H, W, 3)`` array.
        side: the output side ``S``.
    Returns:
        uint8 ``(side, side, 3)``.
    """
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = image.convert("RGB")
    if image.size != (side, side):
        image = image.resize((side, side), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def cache_key(source: str, params: dict) -> str:
    """Hash of what decides a cache's content (JSON of the source, format version, parameters)."""
    text = json.dumps({"format": FORMAT_VERSION, "source": source, "params": params}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def materialize(cache_dir: Path, source: str, params: dict, write: Callable[[Path], None]) -> Path:
    """The cache folder for ``(source, params)``, written once by ``write(folder)`` if absent.

    ``write`` fills a temporary folder with one sub-folder per split (``write_split``); the
    manifest is added and the folder renamed into place. If ``write`` raises, nothing is left.

    Args:
        cache_dir: the parent of all caches.
        source: the source name (first part of the folder name).
        params: JSON-able parameters that decide the content; hashed into the folder name.
        write: fills the given empty folder.
    """
    cache_dir = Path(cache_dir)
    root = cache_dir / f"{source}-{cache_key(source, params)}"
    if root.is_dir():
        return root
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=cache_dir))
    try:
        write(tmp)
        _write_manifest(tmp, source, params)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any data folder
        try:
            tmp.rename(root)
        except OSError:
            if not (root / MANIFEST).is_file():  # not a concurrent writer that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def write_split(folder: Path, data: SplitData, side: int) -> None:
    """Write one split's files into ``folder`` (created).

    Args:
        folder: the split's folder inside the temporary cache folder.
        data: ids, lazily produced images, captions, dense captions.
        side: the square side ``S`` every image must have.
    """
    n = len(data.image_ids)
    if n == 0:
        raise UserError(f"split '{folder.name}' has no images")
    folder.mkdir(parents=True)
    shape = (n, side, side, 3)
    images = np.memmap(folder / "images.u8", dtype=np.uint8, mode="w+", shape=shape)
    count = 0
    for count, image in enumerate(data.images, start=1):
        if count > n:
            raise ValueError(f"split '{folder.name}': more images than its {n} ids")
        images[count - 1] = image
    if count != n:
        raise ValueError(f"split '{folder.name}': {count} images for {n} ids")
    images.flush()
    del images
    _write_json(folder / "index.json", {"image_ids": list(data.image_ids), "shape": list(shape)})
    _write_jsonl(folder / "captions.jsonl", zip(data.caption_image, data.captions))
    if data.dense is not None:
        _write_jsonl(folder / "dense.jsonl", enumerate(data.dense))


def open_splits(root: Path) -> dict[str, Split]:
    """Open every split of a written cache folder (cheap: reads the text files, maps the images).

    Args:
        root: a folder returned by :func:`materialize`.
    """
    manifest = _read_manifest(root)
    return {name: _open_split(root / name, name, entry["fingerprint"]) for name, entry in manifest["splits"].items()}


def verify(root: Path) -> None:
    """Re-hash every file of a cache folder against its manifest; a mismatch is a UserError."""
    manifest = _read_manifest(root)
    damaged = [
        f"{name}/{file}"
        for name, entry in manifest["splits"].items()
        for file, digest in entry["files"].items()
        if not (root / name / file).is_file() or _sha256(root / name / file) != digest
    ]
    if damaged:
        raise UserError(f"data cache {root} is damaged ({', '.join(damaged)} changed); delete the folder to rebuild it")


# ---------------------------------------------------------------------------------- internals
def _open_split(folder: Path, name: str, fingerprint: str) -> Split:
    index = json.loads((folder / "index.json").read_text())
    shape = tuple(index["shape"])
    path = folder / "images.u8"
    if not path.is_file() or path.stat().st_size != math.prod(shape):
        raise UserError(f"data cache {folder} is damaged (images.u8 does not hold {shape}); delete it to rebuild")
    pairs = _read_jsonl(folder / "captions.jsonl")
    dense = _read_jsonl(folder / "dense.jsonl") if (folder / "dense.jsonl").is_file() else None
    return Split(
        name=name,
        images=ImageStore(path, shape),
        image_ids=index["image_ids"],
        captions=[text for _, text in pairs],
        caption_image=np.array([image for image, _ in pairs], dtype=np.int64),
        dense=[text for _, text in dense] if dense is not None else None,
        fingerprint=fingerprint,
    )


def _write_manifest(root: Path, source: str, params: dict) -> None:
    splits = {}
    folders = sorted((p for p in root.iterdir() if p.is_dir()), key=_split_rank)
    for folder in folders:
        files = {file: _sha256(folder / file) for file in SPLIT_FILES if (folder / file).is_file()}
        # the split's fingerprint: one hash over its files' names and digests
        fingerprint = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
        splits[folder.name] = {"fingerprint": fingerprint, "files": files}
    manifest = {"format": FORMAT_VERSION, "source": source, "params": params, "splits": splits}
    _write_json(root / MANIFEST, manifest)


def _split_rank(folder: Path) -> tuple[int, str]:
    name = folder.name
    return (SPLIT_ORDER.index(name) if name in SPLIT_ORDER else len(SPLIT_ORDER), name)


def _read_manifest(root: Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise UserError(f"{root} is not a data cache (no {MANIFEST})")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT_VERSION:
        raise UserError(f"data cache {root} has format {manifest.get('format')}, expected {FORMAT_VERSION}; delete it")
    return manifest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def _write_jsonl(path: Path, pairs: Iterable[tuple[int, str]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for image, text in pairs:
            f.write(json.dumps({"image": int(image), "text": text}, ensure_ascii=False) + "\n")


def _read_jsonl(path: Path) -> list[tuple[int, str]]:
    with open(path, encoding="utf-8") as f:
        return [(row["image"], row["text"]) for row in map(json.loads, f)]
