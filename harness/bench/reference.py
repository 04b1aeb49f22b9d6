"""The naive per-query retrieval metrics of the VSE family (numpy loops), kept as a reference.

One sort per query, as in the classic VSE ``i2t``/``t2i`` loops, generalised to any number of
texts per image and to folds of consecutive images. It follows the tie rule of
``core.metrics.retrieval_ranks`` by construction instead of by counting: candidates are sorted
by descending score with a stable sort and the ground truth placed after the negatives, so a
negative tying the ground truth is ranked before it. It is checked against ``core.metrics`` in
``tests/test_metrics.py`` and timed against it in ``harness.bench.retrieval``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.metric_keys import RSUM, rank_key, recall_key

__all__ = ["reference_ranks", "reference_recall", "reference_kfold_recall"]


def reference_ranks(sims: np.ndarray, txt2img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based I2T ranks ``(n_images,)`` and T2I ranks ``(n_texts,)``, one sort per query.

    Args:
        sims: ``(n_images, n_texts)`` similarities.
        txt2img: ``(n_texts,)`` image index of each text.
    """
    n_images, n_texts = sims.shape
    i2t = np.zeros(n_images, dtype=np.int64)
    for i in range(n_images):
        i2t[i] = _first_hit(sims[i], positives=np.flatnonzero(txt2img == i), negatives=np.flatnonzero(txt2img != i))
    t2i = np.zeros(n_texts, dtype=np.int64)
    images = np.arange(n_images)
    for j in range(n_texts):
        t2i[j] = _first_hit(sims[:, j], positives=images[images == txt2img[j]], negatives=images[images != txt2img[j]])
    return i2t, t2i


def reference_recall(sims: np.ndarray, txt2img: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@K in percent, rsum, median and mean rank (1-based) with the VSE formulas.

    Args:
        sims: ``(n_images, n_texts)`` similarities.
        txt2img: ``(n_texts,)`` image index of each text.
        ks: the recall cut-offs.
    """
    i2t, t2i = reference_ranks(sims, txt2img)
    out = {}
    for direction, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            out[recall_key(direction, k)] = 100.0 * len(np.where(ranks < k)[0]) / len(ranks)
    out[RSUM] = sum(out[recall_key(direction, k)] for direction in ("i2t", "t2i") for k in ks)
    for direction, ranks in (("i2t", i2t), ("t2i", t2i)):
        out[rank_key(direction, "medr")] = float(np.floor(np.median(ranks)) + 1)
        out[rank_key(direction, "meanr")] = float(ranks.mean() + 1)
    return out


def reference_kfold_recall(
    sims: np.ndarray, txt2img: np.ndarray, fold_size: int, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Metrics of each fold of ``fold_size`` consecutive images and their texts, averaged over folds.

    Args:
        sims: ``(n_images, n_texts)`` similarities.
        txt2img: ``(n_texts,)`` image index of each text.
        fold_size: images per fold.
        ks: the recall cut-offs.
    """
    results = []
    for lo in range(0, sims.shape[0], fold_size):
        texts = np.flatnonzero((txt2img >= lo) & (txt2img < lo + fold_size))
        results.append(reference_recall(sims[lo : lo + fold_size][:, texts], txt2img[texts] - lo, ks))
    return {key: float(np.mean([r[key] for r in results])) for key in results[0]}


def _first_hit(scores: np.ndarray, positives: np.ndarray, negatives: np.ndarray) -> int:
    """Position of the first positive when candidates are sorted by descending score, negatives first among ties."""
    candidates = np.concatenate([negatives, positives])
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    return int(np.flatnonzero(np.isin(order, positives))[0])
