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

import argparse
import json
import math
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from core.config import DataConfig, SynthScenesConfig
from core.data.cache import Split, SplitData, cache_side, fit_square, materialize, open_splits, write_split
from core.errors import UserError

__all__ = [
    "VERSION",
    "Obj",
    "Scene",
    "SceneRecord",
    "build",
    "cache_params",
    "make_record",
    "records",
    "render",
    "realize",
    "relations",
    "caption_is_true",
    "dense_caption",
    "card",
]

VERSION = 1  # bump when scenes, captions or rendering change: the cache key includes it
SPLITS = {"train": 0, "val": 1, "test": 2}  # split -> its code in the per-image seed

# Each attribute value maps to the words that may name it in a sparse caption; the first one is
# the dense caption's.
SHAPES: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disk", "round shape"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
    "cross": ("cross", "plus sign"),
    "star": ("star",),
}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (245, 140, 25),
    "yellow": (240, 220, 40),
    "green": (45, 165, 60),
    "blue": (40, 85, 215),
    "purple": (135, 55, 185),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SIZES: dict[str, tuple[str, ...]] = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"gray": (125, 125, 125), "brown": (110, 80, 55), "beige": (205, 190, 160)}
COLUMNS = ("left", "center", "right")
ROWS = ("top", "middle", "bottom")
RELATIONS: dict[str, tuple[str, ...]] = {
    "left_of": ("left of", "to the left of"),
    "right_of": ("right of", "to the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
RADIUS = {"small": 0.2, "large": 0.36}  # object radius as a share of a grid cell
SUPERSAMPLE = 4  # shapes are drawn at 4x and box-averaged down: anti-aliased edges
NOISE_STD = 5.0  # per-pixel Gaussian noise (uint8 levels), so no two renders are identical
COLOUR_JITTER = 12  # per-object colour offset range (uint8 levels)
# The mix of sparse caption kinds (relation and pair need two objects; missing kinds drop out).
KIND_WEIGHTS = {"object": 0.40, "relation": 0.35, "pair": 0.15, "count": 0.10}
P_SIZE = 0.35  # an object description names the size with this probability (colour: always)
P_POSITION = 0.6  # an "object" caption names the object's column, row or cell


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    row: int  # 0 top, 1 middle, 2 bottom
    col: int  # 0 left, 1 center, 2 right


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[Obj, ...]


@dataclass(frozen=True)
class SceneRecord:
    """A generated image's ground truth: the scene graph, its captions and their meanings."""

    scene: Scene
    dense: str
    captions: tuple[str, ...]
    meanings: tuple[dict, ...]  # one per sparse caption, checked by caption_is_true


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
    scene = _random_scene(cfg, rng)
    meanings, captions = [], []
    for _ in range(100 * cfg.captions_per_image):  # retries only for repeated strings
        meaning = _random_meaning(scene, rng)
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


# -------------------------------------------------------------------------------------- scenes
def _random_scene(cfg: SynthScenesConfig, rng: np.random.Generator) -> Scene:
    count = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    cells = rng.choice(len(ROWS) * len(COLUMNS), size=count, replace=False)
    kinds = [(shape, colour) for shape in SHAPES for colour in COLOURS]
    picks = rng.choice(len(kinds), size=count, replace=False)  # unique (shape, colour) per scene
    objects = tuple(
        Obj(*kinds[k], size=str(rng.choice(list(SIZES))), row=int(c) // 3, col=int(c) % 3)
        for k, c in zip(picks, cells)
    )
    return Scene(background=str(rng.choice(list(BACKGROUNDS))), objects=objects)


def relations(a: Obj, b: Obj) -> list[str]:
    """The relations that hold from ``a`` to ``b`` (``left_of``, ``right_of``, ``above``, ``below``)."""
    return [name for name, holds in RELATION_TESTS.items() if holds(a, b)]


RELATION_TESTS: dict[str, Callable[[Obj, Obj], bool]] = {
    "left_of": lambda a, b: a.col < b.col,
    "right_of": lambda a, b: a.col > b.col,
    "above": lambda a, b: a.row < b.row,
    "below": lambda a, b: a.row > b.row,
}


# ------------------------------------------------------------------------------------ meanings
def _matches(obj: Obj, desc: dict) -> bool:
    return all(getattr(obj, field) == value for field, value in desc.items())


def _truth_object(m: dict, scene: Scene) -> bool:
    return any(_matches(o, m["a"]) for o in scene.objects)


def _truth_pair(m: dict, scene: Scene) -> bool:
    objs = scene.objects
    return any(_matches(a, m["a"]) and _matches(b, m["b"]) for a in objs for b in objs if a is not b)


def _truth_relation(m: dict, scene: Scene) -> bool:
    objs, holds = scene.objects, RELATION_TESTS[m["rel"]]
    return any(_matches(a, m["a"]) and _matches(b, m["b"]) and holds(a, b) for a in objs for b in objs if a is not b)


def _truth_count(m: dict, scene: Scene) -> bool:
    return len(scene.objects) == m["n"] and m["background"] == scene.background and _truth_object(m, scene)


TRUTH: dict[str, Callable[[dict, Scene], bool]] = {
    "object": _truth_object,
    "pair": _truth_pair,
    "relation": _truth_relation,
    "count": _truth_count,
}


def caption_is_true(caption_meaning: dict, scene: Scene) -> bool:
    """Whether a sparse caption's meaning holds in ``scene``.

    Args:
        caption_meaning: ``{"kind": "object", "a": desc}``, ``{"kind": "pair", "a", "b"}``,
            ``{"kind": "relation", "a", "rel", "b"}`` or ``{"kind": "count", "n", "background", "a"}``;
            a ``desc`` is a partial object (any of ``shape colour size row col``).
        scene: the scene to check against.
    """
    return TRUTH[caption_meaning["kind"]](caption_meaning, scene)


def _object_desc(obj: Obj, rng: np.random.Generator, position: bool) -> dict:
    """A partial description of ``obj``: its shape and colour, sometimes its size and (when
    ``position``) its column, row or cell."""
    desc = {"shape": obj.shape, "colour": obj.colour}
    if rng.random() < P_SIZE:
        desc["size"] = obj.size
    if position:
        options = [{"row": obj.row, "col": obj.col}]
        options += [{"col": obj.col}] if obj.col != 1 else []
        options += [{"row": obj.row}] if obj.row != 1 else []
        desc.update(options[int(rng.integers(len(options)))])
    return desc


def _random_meaning(scene: Scene, rng: np.random.Generator) -> dict:
    kinds = [k for k in KIND_WEIGHTS if len(scene.objects) > 1 or k in ("object", "count")]
    weights = np.array([KIND_WEIGHTS[k] for k in kinds])
    kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
    objs = scene.objects
    if kind in ("object", "count"):
        obj = objs[int(rng.integers(len(objs)))]
        if kind == "count":
            return {"kind": "count", "n": len(objs), "background": scene.background, "a": _object_desc(obj, rng, position=False)}
        return {"kind": "object", "a": _object_desc(obj, rng, position=rng.random() < P_POSITION)}
    i, j = rng.choice(len(objs), size=2, replace=False)
    a, b = objs[int(i)], objs[int(j)]
    pair = {"a": _object_desc(a, rng, position=False), "b": _object_desc(b, rng, position=False)}
    if kind == "pair":
        return {"kind": "pair", **pair}
    rels = relations(a, b)
    return {"kind": "relation", "rel": rels[int(rng.integers(len(rels)))], **pair}


# ------------------------------------------------------------------------------------- wording
def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def _cell_words(row: int, col: int) -> str:
    return "center" if (row, col) == (1, 1) else f"{ROWS[row]} {COLUMNS[col]}"


def _place(desc: dict, rng: np.random.Generator) -> str:
    """Words for the position part of a description ("" when it has none)."""
    if "row" in desc and "col" in desc:
        return _pick(rng, ("in the", "at the")) + " " + _cell_words(desc["row"], desc["col"])
    if "col" in desc:
        return _pick(rng, ("on the", "at the")) + " " + COLUMNS[desc["col"]] + _pick(rng, ("", " side"))
    if "row" in desc:
        return _pick(rng, ("at the", "near the")) + " " + ROWS[desc["row"]]
    return ""


def _noun_phrase(desc: dict, rng: np.random.Generator) -> str:
    words = [_pick(rng, SIZES[desc["size"]])] if "size" in desc else []
    words += [desc["colour"]] if "colour" in desc else []
    words.append(_pick(rng, SHAPES[desc["shape"]]))
    return _article(" ".join(words))


def _say_object(m: dict, rng: np.random.Generator) -> str:
    thing, place = _noun_phrase(m["a"], rng), _place(m["a"], rng)
    if place:
        return _pick(rng, ("{t} {p}", "there is {t} {p}", "{p} there is {t}", "{t} can be seen {p}")).format(t=thing, p=place)
    return _pick(rng, ("{t}", "there is {t}", "a picture with {t}", "an image showing {t}")).format(t=thing)


def _say_pair(m: dict, rng: np.random.Generator) -> str:
    a, b = _noun_phrase(m["a"], rng), _noun_phrase(m["b"], rng)
    return _pick(rng, ("{a} and {b}", "a picture of {a} and {b}", "there are {a} and {b}")).format(a=a, b=b)


def _say_relation(m: dict, rng: np.random.Generator) -> str:
    a, b, rel = _noun_phrase(m["a"], rng), _noun_phrase(m["b"], rng), _pick(rng, RELATIONS[m["rel"]])
    return _pick(rng, ("{a} {r} {b}", "{a} is {r} {b}", "there is {a} {r} {b}")).format(a=a, r=rel, b=b)


def _say_count(m: dict, rng: np.random.Generator) -> str:
    n = NUMBERS[m["n"]]
    things = _pick(rng, ("shape", "object")) + ("s" if m["n"] != 1 else "")
    templates = ("{n} {t} on a {bg} background, one of them {a}", "a {bg} background with {n} {t} including {a}")
    if m["n"] == 1:
        templates = ("{a} alone on a {bg} background", "a {bg} background with only {a}")
    return _pick(rng, templates).format(n=n, t=things, bg=m["background"], a=_noun_phrase(m["a"], rng))


SAY: dict[str, Callable[[dict, np.random.Generator], str]] = {
    "object": _say_object,
    "pair": _say_pair,
    "relation": _say_relation,
    "count": _say_count,
}


def realize(meaning: dict, rng: np.random.Generator) -> str:
    """One wording of a caption meaning (templates and synonyms drawn from ``rng``)."""
    return SAY[meaning["kind"]](meaning, rng)


def dense_caption(scene: Scene) -> str:
    """Every object with all its attributes and cell, then the relations between neighbours in
    reading order (top to bottom, left to right), which with the cells fix all relations."""
    objs = sorted(scene.objects, key=lambda o: (o.row, o.col))
    n = len(objs)
    parts = [f"{_article(f'{o.size} {o.colour} {o.shape}')} in the {_cell_words(o.row, o.col)}" for o in objs]
    listed = parts[0] if n == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    text = f"{NUMBERS[n]} shape{'s' if n != 1 else ''} on a {scene.background} background: {listed}."
    for a, b in zip(objs, objs[1:]):
        rels = " and ".join(RELATIONS[r][0] for r in relations(a, b))
        text += f" the {a.colour} {a.shape} is {rels} the {b.colour} {b.shape}."
    return text


# ------------------------------------------------------------------------------------ drawing
def _circle(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill: tuple) -> None:
    draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)


def _square(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill: tuple) -> None:
    h = r * 0.85  # about the circle's area
    draw.rectangle((x - h, y - h, x + h, y + h), fill=fill)


def _triangle(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill: tuple) -> None:
    draw.polygon([(x, y - r), (x + r * 0.95, y + r * 0.75), (x - r * 0.95, y + r * 0.75)], fill=fill)


def _diamond(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill: tuple) -> None:
    draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)


def _cross(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill: tuple) -> None:
    t = r * 0.35
    draw.rectangle((x - r, y - t, x + r, y + t), fill=fill)
    draw.rectangle((x - t, y - r, x + t, y + r), fill=fill)


def _star(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill: tuple) -> None:
    angles = np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    draw.polygon([(x + q * np.cos(a), y - q * np.sin(a)) for a, q in zip(angles, radii)], fill=fill)


DRAW: dict[str, Callable[[ImageDraw.ImageDraw, float, float, float, tuple], None]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "diamond": _diamond,
    "cross": _cross,
    "star": _star,
}


def render(scene: Scene, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw a scene: each object inside its grid cell (jittered), anti-aliased, with pixel noise.

    Args:
        scene: what to draw.
        size: the square image side in pixels.
        rng: the image's render stream (jitter, colour offsets, noise).
    Returns:
        uint8 ``(size, size, 3)``.
    """
    side = size * SUPERSAMPLE
    image = Image.new("RGB", (side, side), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    cell = side / 3
    for obj in scene.objects:
        radius = RADIUS[obj.size] * cell
        slack = cell / 2 - radius - 0.05 * cell  # keep every object inside its own cell
        x, y = ((obj.col + 0.5) * cell, (obj.row + 0.5) * cell) + rng.uniform(-slack, slack, size=2)
        colour = np.clip(np.array(COLOURS[obj.colour]) + rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, 3), 0, 255)
        DRAW[obj.shape](draw, float(x), float(y), radius, tuple(int(c) for c in colour))
    pixels = np.asarray(image.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    pixels += rng.normal(0.0, NOISE_STD, pixels.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------- card
def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _stats(values: list[int] | list[float]) -> dict[str, float]:
    return {"mean": round(float(np.mean(values)), 2), "min": int(min(values)), "max": int(max(values))}


def _chance_i2t(n_texts: int, per_image: int, k: int) -> float:
    # P(at least one of an image's captions in the top k of n_texts random captions)
    return 1.0 - math.comb(n_texts - per_image, k) / math.comb(n_texts, k)


def _ceiling(images_per_query: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """Text-to-image recall (percent) of a model that ranks first, in random order, the m images
    a query is equally true of: the own image is in the top k with probability min(1, k / m)."""
    return {f"t2i_r{k}": round(100 * float(np.minimum(1.0, k / images_per_query).mean()), 2) for k in ks}


def card(data_cfg: DataConfig, cache_dir: Path, fold_size: int | None = None) -> dict:
    """The dataset card's numbers, measured on the generated splits.

    Args:
        data_cfg: the data section (its ``synthscenes`` part decides the benchmark).
        cache_dir: where the cache is built or found.
        fold_size: the test protocol's folds (``eval.fold_size``): ambiguity and chance are
            those of a gallery of that many images (None: the whole test split).
    Returns:
        sizes, vocabulary, caption lengths in words, objects per scene, the test split's
        ambiguity (sparse captions true of several test images, checked on the scene graphs) with
        the text-to-image recall it leaves reachable for sparse and for dense queries (how much
        more a dense caption identifies its image), and the chance-level recall (percent).
    """
    cfg = data_cfg.synthscenes
    splits = build(data_cfg.model_copy(update={"source": "synthscenes"}), cache_dir)
    recs = {name: records(cfg, name) for name in splits}
    for name, split in splits.items():  # the cache holds what the generator says
        if split.captions != [c for rec in recs[name] for c in rec.captions]:
            raise UserError(f"data cache of split {name} does not match the generator; delete it")
    sparse = [c for s in splits.values() for c in s.captions]
    dense = [d for s in splits.values() for d in s.dense]
    size = fold_size or len(recs["test"])
    folds = [recs["test"][lo : lo + size] for lo in range(0, len(recs["test"]), size)]
    per_caption, per_dense = [], []
    for fold in folds:  # a caption competes with the images of its own fold only
        scenes = [rec.scene for rec in fold]
        per_caption += [sum(caption_is_true(m, s) for s in scenes) for rec in fold for m in rec.meanings]
        dense_counts = Counter(rec.dense for rec in fold)
        per_dense += [dense_counts[rec.dense] for rec in fold]
    per_caption, per_dense = np.array(per_caption), np.array(per_dense)
    n_img, n_txt, ks = size, size * cfg.captions_per_image, (1, 5, 10)
    return {
        "config": {**cfg.model_dump(mode="json"), "data.image_size": data_cfg.image_size, "cached_side": cache_side(data_cfg)},
        "images": {name: len(s.images) for name, s in splits.items()},
        "sparse_captions": {name: len(s.captions) for name, s in splits.items()},
        "vocabulary": {
            "all": len({w for t in sparse + dense for w in _words(t)}),
            "sparse": len({w for t in sparse for w in _words(t)}),
            "dense": len({w for t in dense for w in _words(t)}),
        },
        "words_per_caption": {"sparse": _stats([len(_words(t)) for t in sparse]), "dense": _stats([len(_words(t)) for t in dense])},
        "objects_per_scene": {
            **_stats([len(rec.scene.objects) for r in recs.values() for rec in r]),
            "histogram": dict(sorted(Counter(len(rec.scene.objects) for r in recs.values() for rec in r).items())),
        },
        "sparse_caption_kinds": dict(Counter(m["kind"] for r in recs.values() for rec in r for m in rec.meanings)),
        "test_ambiguity": {
            "gallery": {"images": n_img, "folds": len(folds)},
            "captions": len(per_caption),
            "true_of_several_images": int((per_caption > 1).sum()),
            "images_per_caption": _stats(per_caption.tolist()),
            # Text-to-image ceiling: no model can tell apart the images a caption is equally true
            # of; ranking them first in random order finds the caption's own image in the top k
            # with probability min(1, k / m). (Image-to-text has no such ceiling: a model may rank
            # an image's most specific true captions, its own, first.)
            "t2i_ceiling": _ceiling(per_caption, ks),
            # The same ceiling for dense queries: a dense caption names every object, its cell and
            # the background, so it is true only of scenes with the same dense caption.
            "images_per_dense_caption": _stats(per_dense.tolist()),
            "dense_t2i_ceiling": _ceiling(per_dense, ks),
        },
        "chance_recall": {
            **{f"i2t_r{k}": round(100 * _chance_i2t(n_txt, cfg.captions_per_image, k), 2) for k in ks},
            **{f"t2i_r{k}": round(100 * k / n_img, 2) for k in ks},
        },
    }


def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m core.data.synthscenes", description="SynthScenes tools")
    parser.add_argument("--card", action="store_true", help="print the dataset card's numbers as JSON")
    parser.add_argument("--setting", type=Path, help="a setting YAML whose `data` section is used (default: DataConfig())")
    parser.add_argument("--cache-dir", type=Path, help="data cache folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if not args.card:
        parser.error("nothing to do (use --card)")
    raw = yaml.safe_load(args.setting.read_text()) if args.setting else {}
    if "extends" in (raw or {}):
        parser.error(f"{args.setting} extends another setting; resolve it with the harness")
    data_cfg = DataConfig.model_validate((raw or {}).get("data", {}))
    fold_size = ((raw or {}).get("eval") or {}).get("fold_size")
    if args.cache_dir is not None:
        result = card(data_cfg, args.cache_dir, fold_size)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = card(data_cfg, Path(tmp), fold_size)
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    _main()
