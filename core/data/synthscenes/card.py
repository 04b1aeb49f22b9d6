"""The dataset card's numbers, measured on the generated splits (docs/datasets.md)."""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import numpy as np

from core.config import DataConfig
from core.data.cache import cache_side
from core.data.synthscenes import build, records
from core.data.synthscenes.captions import caption_is_true
from core.errors import UserError
from core.metric_keys import recall_key

__all__ = ["card"]


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
    return {recall_key("t2i", k): round(100 * float(np.minimum(1.0, k / images_per_query).mean()), 2) for k in ks}


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
            **{recall_key("i2t", k): round(100 * _chance_i2t(n_txt, cfg.captions_per_image, k), 2) for k in ks},
            **{recall_key("t2i", k): round(100 * k / n_img, 2) for k in ks},
        },
    }


