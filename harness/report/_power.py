"""What a comparison with the baseline can detect: the power line under each delta.

Two noises blur an rSum difference. Seed noise: the same arm trained again (another seed: other
initial weights, data order, augmentation) lands elsewhere; its size is the standard deviation
``sd`` of the per-seed differences, estimable from two seeds on, and averaging n seeds divides
its variance by n. Test noise: the test set is one sample of queries; the paired bootstrap's
standard error ``se`` of the (seed-averaged) difference measures it, and more seeds do not remove
it (every seed is tested on the same queries). So the standard error of a study's difference
with n seeds is taken as ``sqrt(sd^2 / n + se^2)``.

A two-sided test at level alpha with power 1 - beta detects, at that standard error, differences
of at least ``(t_{1-alpha/2} + t_{1-beta}) * SE`` (Student's t with n - 1 degrees of freedom: sd
is estimated from the n seeds; the normal quantiles when n = 1, where sd is unknown and only the
test noise is counted). The seeds needed for a chosen difference are the smallest n for which
that bound falls below it; none suffice when the test noise alone is too large.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["Power", "power", "detectable", "MAX_SEEDS"]

ALPHA = 0.05  # two-sided level
POWER = 0.80  # 1 - beta
MAX_SEEDS = 1000  # beyond this a difference counts as out of reach


@dataclass(frozen=True)
class Power:
    """What one comparison can detect.

    Attributes:
        n: seeds the comparison pairs.
        seed_sd: standard deviation of the per-seed rSum differences (None when n < 2).
        test_se: bootstrap standard error of the difference from the test queries.
        detectable: the smallest difference detectable at this n (80% power, 5% level).
        target: the difference asked about (``harness report --detect``), or None.
        seeds_for_target: seeds it needs (None: not asked, unknown with one seed, or out of reach).
    """

    n: int
    seed_sd: float | None
    test_se: float
    detectable: float
    target: float | None = None
    seeds_for_target: int | None = None


def _quantiles(n: int) -> float:
    """``t_{1-alpha/2} + t_{power}`` with n - 1 degrees of freedom (normal when n = 1)."""
    if n < 2:
        return float(stats.norm.ppf(1 - ALPHA / 2) + stats.norm.ppf(POWER))
    return float(stats.t.ppf(1 - ALPHA / 2, n - 1) + stats.t.ppf(POWER, n - 1))


def detectable(n: int, seed_sd: float | None, test_se: float) -> float:
    """The smallest difference a study of ``n`` seeds detects (80% power, 5% two-sided).

    Args:
        n: seeds.
        seed_sd: per-seed standard deviation of the difference; None: unknown (counted as 0).
        test_se: the test set's standard error of the difference.
    """
    return _quantiles(n) * math.sqrt((seed_sd or 0.0) ** 2 / n + test_se**2)


def power(seed_differences: Sequence[float], test_se: float, target: float | None = None) -> Power:
    """The power line of one comparison.

    Args:
        seed_differences: arm minus baseline rSum, one per paired seed (or one value: the
            difference of the seed-averaged rSums when no seed is shared).
        test_se: the paired bootstrap's standard error of the difference.
        target: a difference to plan for (``--detect``); None: not asked.
    """
    n = len(seed_differences)
    seed_sd = float(np.std(seed_differences, ddof=1)) if n >= 2 else None
    needed = None
    if target is not None and seed_sd is not None:
        needed = next((k for k in range(2, MAX_SEEDS + 1) if detectable(k, seed_sd, test_se) <= target), None)
    return Power(n, seed_sd, test_se, detectable(n, seed_sd, test_se), target, needed)
