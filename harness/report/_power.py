"""What a comparison with the baseline can detect: the power line under each delta.

A per-query rSum difference between two arms, on seed s, is ``mu + a_q + b_qs + c_s``: ``a_q`` what
query q favours whatever the seed (the test set's own noise: every seed is tested on the same
queries, so more seeds never remove it), ``b_qs`` how retraining flips individual queries, and
``c_s`` a seed's global shift. With Q queries and k seeds the study's estimate has variance

    SE^2(k) = A + sd^2 / k,    A = Var(a) / Q,    sd^2 = Var(b) / Q + Var(c)

``sd`` is the standard deviation of the per-seed rSum differences (the shared ``a`` cancels
between seeds); ``A`` comes from the paired bootstrap over queries: the variance of one seed alone
is ``v_1 = A + Var(b)/Q`` and that of the n-seed average ``v_n = A + Var(b)/(nQ)``, so
``A = (n v_n - mean_s v_1,s) / (n - 1)`` (:func:`shared_query_se`). With one seed, sd is unknown
and the bootstrap's ``v_1`` is all that is known.

A two-sided test at level alpha with power 1 - beta detects differences of at least
``(t_{1-alpha/2} + t_{1-beta}) * SE(k)`` (Student's t with k - 1 degrees of freedom, sd being
estimated from the seeds; the normal quantiles at k = 1). The seeds needed for a chosen
difference are the smallest k for which that bound falls below it; none suffice when the test
set's own noise alone is too large.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["Power", "power", "detectable", "shared_query_se", "MAX_SEEDS"]

ALPHA = 0.05  # two-sided level
POWER = 0.80  # 1 - beta
MAX_SEEDS = 1000  # beyond this a difference counts as out of reach


@dataclass(frozen=True)
class Power:
    """What one comparison can detect.

    Attributes:
        n: seeds the comparison pairs.
        seed_sd: standard deviation of the per-seed rSum differences (None when n < 2).
        test_se: the test queries' shared standard error (``sqrt(A)``); with one seed, the
            bootstrap's whole standard error.
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


def shared_query_se(averaged_variance: float, per_seed_variances: Sequence[float]) -> float:
    """``sqrt(A)``, the test set's noise that seeds do not average away (module docstring).

    Args:
        averaged_variance: the bootstrap variance of the seed-averaged difference (``v_n``).
        per_seed_variances: the bootstrap variance of each seed's difference alone (``v_1,s``).
    """
    n = len(per_seed_variances)
    if n < 2:
        raise ValueError("the shared query noise needs at least 2 seeds")
    return math.sqrt(max(0.0, (n * averaged_variance - float(np.mean(per_seed_variances))) / (n - 1)))


def detectable(n: int, seed_sd: float | None, test_se: float) -> float:
    """The smallest difference a study of ``n`` seeds detects (80% power, 5% two-sided).

    Args:
        n: seeds.
        seed_sd: per-seed standard deviation of the difference; None: unknown (counted as 0).
        test_se: the test set's shared standard error of the difference.
    """
    return _quantiles(n) * math.sqrt((seed_sd or 0.0) ** 2 / n + test_se**2)


def power(seed_differences: Sequence[float], test_se: float, target: float | None = None) -> Power:
    """The power line of one comparison.

    Args:
        seed_differences: arm minus baseline rSum, one per paired seed (or one value: the
            difference of the seed-averaged rSums when no seed is shared).
        test_se: with two seeds or more, the shared query noise (:func:`shared_query_se`); with
            one, the paired bootstrap's standard error.
        target: a difference to plan for (``--detect``); None: not asked.
    """
    n = len(seed_differences)
    seed_sd = float(np.std(seed_differences, ddof=1)) if n >= 2 else None
    needed = None
    if target is not None and seed_sd is not None:
        needed = next((k for k in range(2, MAX_SEEDS + 1) if detectable(k, seed_sd, test_se) <= target), None)
    return Power(n, seed_sd, test_se, detectable(n, seed_sd, test_se), target, needed)
