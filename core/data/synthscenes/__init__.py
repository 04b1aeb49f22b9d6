"""SynthScenes: the embedded benchmark, generated deterministically from ``data.synthscenes.seed``.

A scene is a background colour and ``min_objects..max_objects`` objects on a 3 x 3 grid (one per
cell), each with a shape, a colour (unique per scene with its shape, so "the red circle" names one
object) and a size. Per image, one dense caption describes every object with all its attributes
and its cell, and the relations between neighbours in reading order; ``captions_per_image`` sparse
captions each say a few words about part of the scene (one object, two objects, a relation, the
count), with varied templates and synonyms. Like the paper's setting, the dense caption holds more
than any one sparse caption.

Every sparse caption is generated from a *meaning* (a small dict) and is literally true of its
scene: :func:`caption_is_true` checks a meaning against any scene, which gives the benchmark's
ambiguity ceiling (a caption such as "a red circle" is true of several images). Left/right words
are the only mirrored ones, so a horizontally flipped image keeps true captions when left and
right are swapped (``core.data.augment.swap_left_right``).

Each image draws from its own generator seeded by ``(seed, split, index)``, so a split's scenes do
not depend on the other splits' sizes, and the same seed gives byte-identical cache files.
``python -m core.data.synthscenes --card`` prints the dataset card (docs/datasets.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.config import DataConfig, SynthScenesConfig
from core.data.cache import Split, SplitData, cache_side, fit_square, materialize, open_splits, write_split
from core.data.synthscenes.captions import caption_is_true, dense_caption, random_meaning, realize
from core.data.synthscenes.render import render
from core.data.synthscenes.scene import COLOURS, COLUMNS, ROWS, Obj, Scene, SceneRecord, random_scene, relations
from core.errors import UserError

__all__ = [
    "VERSION",
    "Obj",
    "Scene",
    "SceneRecord",
    "COLOURS",
    "build",
    "cache_params",
    "make_record",
    "records",
    "render",
    "realize",
    "relations",
    "caption_is_true",
    "dense_caption",
]

VERSION = 1  # bump when scenes, captions or rendering change: the cache key includes it
SPLITS = {"train": 0, "val": 1, "test": 2}  # split -> its code in the per-image seed


# ------------------------------------------------------------------------------------ builder
def build(data: DataConfig, cache_dir: Path) -> dict[str, Split]:
    """Generate (first use) and open the SynthScenes splits ``train``, ``val``, ``test``.

    Args:
        data: the data section; reads ``synthscenes``, ``image_size`` and ``cache_margin``.
        cache_dir: parent folder of the data caches.
    """
    root = materialize(cache_dir, "synthscenes", cache_params(data), lambda folder: _write(data.synthscenes, cache_side(data), folder))
    return open_splits(root)


def cache_params(data: DataConfig) -> dict:
    """What decides the splits' content: the generator's version and settings, the cached side."""
    cfg = data.synthscenes
    if cfg.max_objects > len(ROWS) * len(COLUMNS):
        raise UserError(f"data.synthscenes.max_objects={cfg.max_objects}: the 3 x 3 grid holds at most 9 objects")
    return {"version": VERSION, "synthscenes": cfg.model_dump(mode="json"), "side": cache_side(data)}


def _write(cfg: SynthScenesConfig, side: int, folder: Path) -> None:
    for split, count in (("train", cfg.num_train), ("val", cfg.num_val), ("test", cfg.num_test)):
        recs = records(cfg, split)
        data = SplitData(
            image_ids=[f"{split}-{i:06d}" for i in range(count)],
            images=(fit_square(render(rec.scene, cfg.image_size, _render_rng(cfg, split, i)), side) for i, rec in enumerate(recs)),
            captions=[text for rec in recs for text in rec.captions],
            caption_image=[i for i, rec in enumerate(recs) for _ in rec.captions],
            dense=[rec.dense for rec in recs],
        )
        write_split(folder / split, data, side)


def records(cfg: SynthScenesConfig, split: str) -> list[SceneRecord]:
    """Every scene record of a split (cheap: no rendering).

    Args:
        cfg: the SynthScenes section.
        split: ``train``, ``val`` or ``test``.
    """
    count = {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test}[split]
    return [make_record(cfg, split, i) for i in range(count)]


def make_record(cfg: SynthScenesConfig, split: str, index: int) -> SceneRecord:
    """The scene and captions of image ``index`` of ``split``, from its own seeded generator.

    Args:
        cfg: the SynthScenes section (seed, object counts, captions per image).
        split: ``train``, ``val`` or ``test``.
        index: the image's position in its split.
    """
    rng = np.random.default_rng([cfg.seed % 2**32, SPLITS[split], index, 0])
    scene = random_scene(cfg, rng)
    meanings, captions = [], []
    for _ in range(100 * cfg.captions_per_image):  # retries only for repeated strings
        meaning = random_meaning(scene, rng)
        text = realize(meaning, rng)
        if text not in captions:
            meanings.append(meaning)
            captions.append(text)
        if len(captions) == cfg.captions_per_image:
            return SceneRecord(scene, dense_caption(scene), tuple(captions), tuple(meanings))
    raise UserError(f"data.synthscenes.captions_per_image={cfg.captions_per_image}: too many distinct captions for a scene")


def _render_rng(cfg: SynthScenesConfig, split: str, index: int) -> np.random.Generator:
    # a second stream: rendering never shifts the scene/caption stream (records() skips it)
    return np.random.default_rng([cfg.seed % 2**32, SPLITS[split], index, 1])


