"""rSum difference between two arms with a paired bootstrap confidence interval over test queries.

rSum is a sum of six recalls, and a recall is a mean over queries of ``100 * [rank < k]``. So
rSum is ``mean_q h_i2t(q) + mean_q h_t2i(q)`` with a per-query score ``h(q) = 100 * #{k : rank_q
< k}``, and recomputing rSum from the ranks of a resample of queries is the resample's mean of
``h``. The bootstrap draws image queries and text queries (independently of each other, jointly
for both arms: the same drawn queries score both arms) and recomputes the rSum difference on each
draw, vectorised.

Seeds: each arm's per-query score is its mean over seeds, so the estimate is the difference of
the seed-averaged rSums (the table's means). Seeds are paired: when both arms have runs of some
seed, only the seeds they share are used (a seed fixes the shared pre-training and the data
order, so those differences are the cleaner ones); when they share none, each arm averages its
own. The interval covers the test-query sampling only; the spread over seeds is the table's sd.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Delta", "PairedDifference", "rsum_scores", "paired_difference", "bootstrap_deltas", "paired_bootstrap_rsum"]

KS = (1, 5, 10)  # the recall cut-offs summed into rSum
_CHUNK = 1 << 20  # drawn indices (int64) or counts (float64) held at once: 8 MiB, which stays in cache

Ranks = Mapping[str, np.ndarray]  # {"i2t": (n_images,), "t2i": (n_texts,)} 0-based


@dataclass(frozen=True)
class Delta:
    """An arm's rSum minus the baseline's, with its confidence interval.

    Attributes:
        estimate: the difference of the seed-averaged rSums.
        low: the interval's lower end.
        high: the interval's upper end.
        seeds: the seeds used (shared ones, else every seed of either arm).
        se: the bootstrap standard error of the difference (test-query noise).
    """

    estimate: float
    low: float
    high: float
    seeds: tuple[int, ...]
    se: float

    @property
    def contains_zero(self) -> bool:
        """Whether the interval contains 0 (the difference is not distinguishable from noise)."""
        return self.low <= 0.0 <= self.high


def rsum_scores(ranks: Ranks, ks: Sequence[int] = KS) -> dict[str, np.ndarray]:
    """Each query's share of rSum: ``100 * #{k : rank < k}``; rSum is the sum over directions
    of their means.

    Args:
        ranks: 0-based per-query ranks, ``{"i2t": (n_images,), "t2i": (n_texts,)}``.
        ks: the recall cut-offs.
    """
    # A lookup table by rank, every rank from max(ks) on scoring 0.
    table = 100.0 * (np.arange(max(ks) + 1)[:, None] < np.asarray(ks)).sum(1)
    return {d: table[np.clip(ranks[d], 0, max(ks))] for d in ("i2t", "t2i")}


@dataclass(frozen=True)
class PairedDifference:
    """One comparison before resampling: the per-query rSum differences ``arm - baseline``.

    Attributes:
        i2t: ``(n_images,)`` differences of the seed-averaged per-query scores.
        t2i: ``(n_texts,)`` the same for text queries.
        seeds: the seeds used (shared ones, else every seed of either arm).
    """

    i2t: np.ndarray
    t2i: np.ndarray
    seeds: tuple[int, ...]

    @property
    def estimate(self) -> float:
        """The difference of the seed-averaged rSums."""
        return float(self.i2t.mean() + self.t2i.mean())


def paired_difference(arm: Mapping[int, Ranks], baseline: Mapping[int, Ranks]) -> PairedDifference:
    """The per-query rSum differences of ``arm`` over ``baseline``, seeds paired as the module says.

    Args:
        arm: per-query ranks of the arm's runs, by seed.
        baseline: per-query ranks of the baseline's runs, by seed.

    Raises:
        ValueError: an arm without runs, or runs that ranked different numbers of queries (they
            were not evaluated on the same test set, so they cannot be paired).
    """
    if not arm or not baseline:
        raise ValueError("both arms need at least one run with per-query ranks")
    shared = sorted(set(arm) & set(baseline))
    seeds_a, seeds_b = (shared, shared) if shared else (sorted(arm), sorted(baseline))
    mean_a = _mean_scores([arm[s] for s in seeds_a])
    mean_b = _mean_scores([baseline[s] for s in seeds_b])
    for direction in ("i2t", "t2i"):
        if mean_a[direction].shape != mean_b[direction].shape:
            raise ValueError(
                f"{direction}: the arms ranked {mean_a[direction].size} and {mean_b[direction].size} queries;"
                " runs on different test sets cannot be paired"
            )
    seeds = tuple(sorted(set(seeds_a) | set(seeds_b)))
    return PairedDifference(mean_a["i2t"] - mean_b["i2t"], mean_a["t2i"] - mean_b["t2i"], seeds)


def bootstrap_deltas(
    differences: Sequence[PairedDifference], n_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> list[Delta]:
    """Each comparison's :class:`Delta`, its percentile interval from one shared resampling.

    Comparisons on a test set of one size are resampled together: every one of them sees the
    same drawn queries (those of a lone call with this ``seed``), so a study's deltas cost one
    matrix product per direction instead of one gather per delta.

    Args:
        differences: the comparisons (:func:`paired_difference`).
        n_resamples: bootstrap resamples.
        level: the intervals' coverage.
        seed: seeds the resampling (the same inputs give the same intervals).
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for i, difference in enumerate(differences):
        groups.setdefault((difference.i2t.size, difference.t2i.size), []).append(i)
    tail = (1.0 - level) / 2
    deltas: list[Delta | None] = [None] * len(differences)
    for sizes, members in groups.items():
        counts = _draw_counts(sizes, n_resamples, seed)
        samples = sum(
            _resampled_means(np.stack([getattr(differences[i], d) for i in members], axis=1), drawn)
            for d, drawn in zip(("i2t", "t2i"), counts)
        )  # (n_resamples, len(members))
        lows, highs = np.quantile(samples, [tail, 1.0 - tail], axis=0)
        ses = samples.std(axis=0, ddof=1)
        for column, i in enumerate(members):
            d = differences[i]
            deltas[i] = Delta(d.estimate, float(lows[column]), float(highs[column]), d.seeds, float(ses[column]))
    return deltas


def paired_bootstrap_rsum(
    arm: Mapping[int, Ranks],
    baseline: Mapping[int, Ranks],
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Delta:
    """The rSum difference ``arm - baseline`` and its percentile bootstrap interval.

    Args:
        arm: per-query ranks of the arm's runs, by seed.
        baseline: per-query ranks of the baseline's runs, by seed.
        n_resamples: bootstrap resamples.
        level: the interval's coverage.
        seed: seeds the resampling (the same inputs give the same interval).

    Raises:
        ValueError: as :func:`paired_difference`.
    """
    return bootstrap_deltas([paired_difference(arm, baseline)], n_resamples, level, seed)[0]


def _mean_scores(runs: list[Ranks]) -> dict[str, np.ndarray]:
    scores = [rsum_scores(r) for r in runs]
    sizes = {d: {s[d].size for s in scores} for d in ("i2t", "t2i")}
    for direction, found in sizes.items():
        if len(found) > 1:
            raise ValueError(f"{direction}: runs of one arm ranked different numbers of queries {sorted(found)}")
    return {d: np.mean([s[d] for s in scores], axis=0) for d in ("i2t", "t2i")}


@functools.lru_cache(maxsize=2)
def _draw_counts(sizes: tuple[int, ...], n_resamples: int, seed: int) -> tuple[np.ndarray, ...]:
    """How often each query is drawn in each resample, ``(n_resamples, n)`` per direction (image
    queries first), drawn in that order from one generator seeded with ``seed``. The same for
    every comparison on test sets of these sizes, so a report draws them once (float32: exact
    counts, half the memory)."""
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        counts = np.empty((n_resamples, n), np.float32)
        rows = max(1, _CHUNK // n)
        for start in range(0, n_resamples, rows):
            stop = min(start + rows, n_resamples)
            drawn = rng.integers(0, n, size=(stop - start, n)) + n * np.arange(stop - start)[:, None]
            counts[start:stop] = np.bincount(drawn.ravel(), minlength=(stop - start) * n).reshape(stop - start, n)
        counts.flags.writeable = False  # shared by every caller
        out.append(counts)
    return tuple(out)


def _resampled_means(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Column means of ``values`` ``(n, m)`` over each resample's draws (``counts``,
    ``(n_resamples, n)``), ``(n_resamples, m)``, in bounded memory."""
    n = values.shape[0]
    rows = max(1, _CHUNK // n)
    out = np.empty((counts.shape[0], values.shape[1]))
    for start in range(0, counts.shape[0], rows):
        out[start : start + rows] = counts[start : start + rows].astype(np.float64) @ values / n
    return out
