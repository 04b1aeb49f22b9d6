"""Retrieval metrics: rank every query once, derive recall@K, median and mean rank from the ranks.

Ranks are found by counting, not sorting: a query's rank is the number of negative candidates
that do not score strictly below its ground truth. One pass over the similarity matrix, in
chunks of image rows, gives both directions, on the device the matrix lives on. The per-query
ranks are also the artifact behind paired significance tests.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from core.errors import UserError
from core.metric_keys import DIRECTIONS, KS, RSUM, rank_key, recall_key

__all__ = ["retrieval_ranks", "metrics_from_ranks", "retrieval_recall", "kfold_recall", "kfold"]

# Scores compared per chunk: a chunk's boolean mask is this many bytes (1 MiB). On 5K x 25K, CPU,
# chunks of 2**18 to 2**24 scores were tried; from 2**22 up they were slower.
_CHUNK_ELEMENTS = 1 << 20
_INDEX_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def retrieval_ranks(
    sims: torch.Tensor, txt2img: torch.Tensor | np.ndarray | Sequence[int], chunk_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based ranks of every image query (I2T) and every text query (T2I).

    The I2T rank of an image is the rank of its best-scored ground-truth text in its row; the T2I
    rank of a text is the rank of its image in its column. Tie rule (pessimistic): a rank is the
    number of negatives that do not score strictly below the ground truth, so a negative tying
    the ground truth counts against the query, and so does a NaN score (a NaN ground truth ranks
    last). A collapsed model whose similarities are all equal thus gets the worst ranks, never a
    perfect recall. Texts of the same image tying each other do not count: they are not negatives.
    On tie-free scores this is the rank of the classic VSE argsort loop.

    Extra memory beyond ``sims``: one boolean mask of ``chunk_size x n_texts`` and its int32
    count at a time, plus a few vectors of length ``n_images + n_texts``.

    Args:
        sims: ``(n_images, n_texts)`` floating-point similarities; ranking runs on its device.
        txt2img: ``(n_texts,)`` integer image index of each text, any number of texts per image
            (at least one).
        chunk_size: image rows compared at once; ``None`` picks about 1M scores per chunk.

    Returns:
        ``i2t_ranks (n_images,)`` and ``t2i_ranks (n_texts,)``, int64 on the device of ``sims``.
    """
    sims, txt2img = _check_matrix(sims, txt2img)
    _check_every_image_has_text(txt2img, sims.shape[0])
    n_images, n_texts = sims.shape
    rows = _chunk_rows(n_texts, chunk_size)

    gt = sims[txt2img, torch.arange(n_texts, device=sims.device)]  # (T,) each text's score with its image
    best = torch.full((n_images,), -torch.inf, dtype=sims.dtype, device=sims.device)
    best = best.scatter_reduce(0, txt2img, gt, "amax")  # (N,) best ground-truth score of each image
    n_gt = torch.bincount(txt2img, minlength=n_images)  # (N,)
    # Ground-truth texts strictly below their image's best: they are counted in a row's "below"
    # count but are not negatives, so they are taken out again.
    gt_below = torch.zeros(n_images, dtype=torch.long, device=sims.device)
    gt_below.scatter_add_(0, txt2img, (gt < best[txt2img]).long())  # (N,)

    # Counts fit int32 (at most n_texts or n_images); int32 sums of a bool mask measured 2-3x
    # faster on CPU than the default int64 ones.
    i2t_below = torch.empty(n_images, dtype=torch.int32, device=sims.device)  # texts strictly below best
    t2i_below = torch.zeros(n_texts, dtype=torch.int32, device=sims.device)  # images strictly below gt
    for start in range(0, n_images, rows):
        chunk = sims[start : start + rows]  # (c, T)
        i2t_below[start : start + rows] = (chunk < best[start : start + rows, None]).sum(1, dtype=torch.int32)
        t2i_below += (chunk < gt).sum(0, dtype=torch.int32)

    i2t_ranks = (n_texts - n_gt) - (i2t_below.long() - gt_below)  # negatives not strictly below
    t2i_ranks = (n_images - 1) - t2i_below.long()  # the own image is never strictly below itself
    return i2t_ranks, t2i_ranks


def metrics_from_ranks(
    i2t_ranks: torch.Tensor | np.ndarray, t2i_ranks: torch.Tensor | np.ndarray, ks: Sequence[int] = KS
) -> dict[str, float]:
    """Every retrieval metric, from 0-based ranks (keys from :mod:`core.metric_keys`).

    Keys: ``i2t_r{k}`` and ``t2i_r{k}`` for each k (recall in percent: share of queries with rank
    below k), ``rsum`` (sum of those recalls), ``i2t_medr i2t_meanr t2i_medr t2i_meanr`` (1-based,
    the VSE convention: ``floor(median) + 1`` and ``mean + 1``).

    Args:
        i2t_ranks: ``(n_images,)`` 0-based ranks of the image queries.
        t2i_ranks: ``(n_texts,)`` 0-based ranks of the text queries.
        ks: the recall cut-offs, positive integers.
    """
    _check_ks(ks)
    ranks = dict(zip(DIRECTIONS, (_rank_array(i2t_ranks, "i2t_ranks"), _rank_array(t2i_ranks, "t2i_ranks"))))
    recalls = {
        recall_key(direction, k): 100.0 * int(np.count_nonzero(r < k)) / r.size for direction, r in ranks.items() for k in ks
    }
    summaries = {}
    for direction, r in ranks.items():
        summaries[rank_key(direction, "medr")] = float(np.floor(np.median(r)) + 1)
        summaries[rank_key(direction, "meanr")] = float(r.mean() + 1)
    return {**recalls, RSUM: sum(recalls.values()), **summaries}


def retrieval_recall(
    sims: torch.Tensor, txt2img: torch.Tensor | np.ndarray | Sequence[int], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Retrieval metrics of a similarity matrix, both directions (keys: see ``metrics_from_ranks``).

    Args:
        sims: ``(n_images, n_texts)`` similarities (tie rule: see ``retrieval_ranks``).
        txt2img: ``(n_texts,)`` image index of each text; any number of texts per image.
        ks: the recall cut-offs.
    """
    return metrics_from_ranks(*retrieval_ranks(sims, txt2img), ks)


def kfold_recall(
    sims: torch.Tensor,
    txt2img: torch.Tensor | np.ndarray | Sequence[int],
    fold_size: int,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Metrics averaged over folds of consecutive images (COCO 5-fold 1K: ``fold_size=1000``).

    A fold is ``fold_size`` consecutive images with the texts of those images, ranked against
    each other only. Each fold is a slice of the one full similarity matrix; every metric
    (``rsum``, ``medr`` included) is the mean of its per-fold values, as in the VSE family.

    Args:
        sims: ``(n_images, n_texts)`` similarities; ``n_images`` a multiple of ``fold_size``.
        txt2img: ``(n_texts,)`` image index of each text.
        fold_size: images per fold.
        ks: the recall cut-offs.
    """
    return kfold(sims, txt2img, fold_size, ks)[0]


def kfold(
    sims: torch.Tensor, txt2img: torch.Tensor | np.ndarray | Sequence[int], fold_size: int, ks: Sequence[int] = KS
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """The fold protocol in one pass: the metrics averaged over folds (:func:`kfold_recall`), and
    the 0-based rank of every query within its own fold, in the queries' original order
    (``(n_images,)``, ``(n_texts,)``). With folds of equal numbers of texts, the mean over folds of
    a recall or of rSum is its value on these pooled ranks, so a per-query bootstrap over them is
    a bootstrap of the fold protocol.

    Args:
        sims: ``(n_images, n_texts)`` similarities; ``n_images`` a multiple of ``fold_size``.
        txt2img: ``(n_texts,)`` image index of each text.
        fold_size: images per fold.
        ks: the recall cut-offs.
    """
    sims, txt2img = _check_matrix(sims, txt2img)
    i2t = torch.empty(sims.shape[0], dtype=torch.long, device=sims.device)
    t2i = torch.empty(sims.shape[1], dtype=torch.long, device=sims.device)
    per_fold = []
    for ((lo, hi), texts), fold_i2t, fold_t2i in _fold_ranks(sims, txt2img, fold_size):
        i2t[lo:hi], t2i[texts] = fold_i2t, fold_t2i
        per_fold.append(metrics_from_ranks(fold_i2t, fold_t2i, ks))
    return {key: float(np.mean([m[key] for m in per_fold])) for key in per_fold[0]}, i2t, t2i


def _fold_ranks(
    sims: torch.Tensor, txt2img: torch.Tensor | np.ndarray | Sequence[int], fold_size: int
) -> Iterator[tuple[tuple[tuple[int, int], torch.Tensor], torch.Tensor, torch.Tensor]]:
    """Per fold: ``((lo, hi), its text indices)`` and the fold's i2t and t2i ranks."""
    sims, txt2img = _check_matrix(sims, txt2img)
    n_images = sims.shape[0]
    if fold_size < 1 or n_images % fold_size:
        raise UserError(f"kfold: {n_images} images do not split into folds of fold_size={fold_size}")
    folds = [(start, start + fold_size) for start in range(0, n_images, fold_size)]
    texts = [torch.nonzero((txt2img >= lo) & (txt2img < hi)).squeeze(1) for lo, hi in folds]  # (T_f,) each
    for f, ((lo, hi), t) in enumerate(zip(folds, texts)):
        if t.numel() == 0:
            raise UserError(f"kfold: fold {f} (images {lo}..{hi - 1}) has no texts")
    _check_every_image_has_text(txt2img, n_images)
    for (lo, hi), t in zip(folds, texts):
        yield ((lo, hi), t), *retrieval_ranks(sims[lo:hi].index_select(1, t), txt2img[t] - lo)


def _check_matrix(sims, txt2img) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate shapes, dtypes and index range; return ``sims`` detached and ``txt2img`` as int64 on its device."""
    sims = torch.as_tensor(sims).detach()
    if sims.ndim != 2 or not sims.is_floating_point():
        raise UserError(
            f"sims must be a 2-D floating-point (n_images, n_texts) matrix, got shape {tuple(sims.shape)} {sims.dtype}"
        )
    n_images, n_texts = sims.shape
    if n_images == 0 or n_texts == 0:
        raise UserError(f"sims is empty: shape {tuple(sims.shape)}")
    txt2img = torch.as_tensor(txt2img, device=sims.device)
    if txt2img.ndim != 1 or txt2img.dtype not in _INDEX_DTYPES:
        raise UserError(f"txt2img must be a 1-D integer vector, got shape {tuple(txt2img.shape)} {txt2img.dtype}")
    if len(txt2img) != n_texts:
        raise UserError(
            f"sims has {n_texts} texts (shape {tuple(sims.shape)}) but txt2img has {len(txt2img)} entries"
        )
    txt2img = txt2img.long()
    outside = txt2img[(txt2img < 0) | (txt2img >= n_images)]
    if outside.numel():
        raise UserError(
            f"txt2img holds image index {outside[0].item()} outside 0..{n_images - 1} (sims has {n_images} images)"
        )
    return sims, txt2img


def _check_every_image_has_text(txt2img: torch.Tensor, n_images: int) -> None:
    missing = torch.nonzero(torch.bincount(txt2img, minlength=n_images) == 0).squeeze(1)
    if missing.numel():
        raise UserError(
            f"{missing.numel()} images have no text (first: {missing[:5].tolist()}): "
            "their image-to-text rank is undefined"
        )


def _chunk_rows(n_texts: int, chunk_size: int | None) -> int:
    if chunk_size is None:
        return max(1, _CHUNK_ELEMENTS // n_texts)
    if chunk_size < 1:
        raise UserError(f"chunk_size must be a positive number of rows, got {chunk_size}")
    return chunk_size


def _check_ks(ks: Sequence[int]) -> None:
    if len(ks) == 0 or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
        raise UserError(f"ks must be positive integer recall cut-offs, got {tuple(ks)}")
    if len(set(ks)) != len(ks):
        raise UserError(f"ks has a repeated cut-off: {tuple(ks)}")


def _rank_array(ranks: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    ranks = torch.as_tensor(ranks).cpu().numpy()
    if ranks.ndim != 1 or ranks.size == 0:
        raise UserError(f"{name} must be a non-empty 1-D vector of ranks, got shape {ranks.shape}")
    return ranks
