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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Delta", "rsum_scores", "paired_bootstrap_rsum"]

KS = (1, 5, 10)  # the recall cut-offs summed into rSum
_CHUNK = 1 << 22  # resampled indices held at once (32 MiB of int64)

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
    return {d: 100.0 * (np.asarray(ranks[d])[:, None] < np.asarray(ks)).sum(1) for d in ("i2t", "t2i")}


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
        ValueError: an arm without runs, or runs that ranked different numbers of queries (they
            were not evaluated on the same test set, so they cannot be paired).
    """
    if not arm or not baseline:
        raise ValueError("both arms need at least one run with per-query ranks")
    shared = sorted(set(arm) & set(baseline))
    seeds_a, seeds_b = (shared, shared) if shared else (sorted(arm), sorted(baseline))
    mean_a = _mean_scores([arm[s] for s in seeds_a])
    mean_b = _mean_scores([baseline[s] for s in seeds_b])
    rng = np.random.default_rng(seed)
    samples = np.zeros(n_resamples)
    estimate = 0.0
    for direction in ("i2t", "t2i"):
        if mean_a[direction].shape != mean_b[direction].shape:
            raise ValueError(
                f"{direction}: the arms ranked {mean_a[direction].size} and {mean_b[direction].size} queries;"
                " runs on different test sets cannot be paired"
            )
        diff = mean_a[direction] - mean_b[direction]  # (n,) per-query rSum difference
        estimate += diff.mean()
        samples += _resampled_means(diff, n_resamples, rng)
    tail = (1.0 - level) / 2
    low, high = np.quantile(samples, [tail, 1.0 - tail])
    seeds = tuple(sorted(set(seeds_a) | set(seeds_b)))
    return Delta(float(estimate), float(low), float(high), seeds, float(samples.std(ddof=1)))


def _mean_scores(runs: list[Ranks]) -> dict[str, np.ndarray]:
    scores = [rsum_scores(r) for r in runs]
    sizes = {d: {s[d].size for s in scores} for d in ("i2t", "t2i")}
    for direction, found in sizes.items():
        if len(found) > 1:
            raise ValueError(f"{direction}: runs of one arm ranked different numbers of queries {sorted(found)}")
    return {d: np.mean([s[d] for s in scores], axis=0) for d in ("i2t", "t2i")}


def _resampled_means(values: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``values`` over ``n_resamples`` resamples with replacement, in bounded memory."""
    n = values.size
    rows = max(1, _CHUNK // n)
    out = np.empty(n_resamples)
    for start in range(0, n_resamples, rows):
        stop = min(start + rows, n_resamples)
        out[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(1)  # (rows,)
    return out
