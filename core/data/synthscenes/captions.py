"""Sparse captions from meanings (checked against any scene) and the dense caption of a scene."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from core.data.synthscenes.scene import COLUMNS, NUMBERS, RELATION_TESTS, RELATIONS, ROWS, SHAPES, SIZES, Obj, Scene, relations

__all__ = ["caption_is_true", "random_meaning", "realize", "dense_caption"]

# The mix of sparse caption kinds (relation and pair need two objects; missing kinds drop out).
KIND_WEIGHTS = {"object": 0.40, "relation": 0.35, "pair": 0.15, "count": 0.10}
P_SIZE = 0.35  # an object description names the size with this probability (colour: always)
P_POSITION = 0.6  # an "object" caption names the object's column, row or cell


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


def random_meaning(scene: Scene, rng: np.random.Generator) -> dict:
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


