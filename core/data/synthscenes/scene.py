"""Scene graphs: the vocabulary of attributes, objects on a 3 x 3 grid, and their relations."""

from __future__ import annotations

from collections.abc import Callable

from dataclasses import dataclass

import numpy as np

from core.config import SynthScenesConfig

__all__ = ["SHAPES", "COLOURS", "SIZES", "BACKGROUNDS", "COLUMNS", "ROWS", "RELATIONS", "NUMBERS", "RELATION_TESTS", "Obj", "Scene", "SceneRecord", "random_scene", "relations"]

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


# -------------------------------------------------------------------------------------- scenes
def random_scene(cfg: SynthScenesConfig, rng: np.random.Generator) -> Scene:
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


