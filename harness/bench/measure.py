"""How a benchmark states its numbers: figures (medians of repeats), and checks against targets.

Every benchmark returns a JSON-able dict; the writer (``harness.bench.report``) renders three of
its keys specially, and every other key as a detail:

- ``figures``: ``{name: Figure.to_json()}``, each the median of its repeats with min and max.
- ``checks``: ``[check(...), ...]``: a value (a ratio of two figures measured in the same process,
  or a single figure) with its target and whether it is met.
- ``notes``: sentences the reader needs (what was reduced, what could not be measured).

A check says where its target comes from (``source``): the issue that set it, the suite's earlier
target, or "proposed" when the benchmark chose one because no issue did.
"""

from __future__ import annotations

import operator
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from core.errors import UserError

__all__ = ["Figure", "TARGET_OPS", "ISSUE", "EARLIER", "PROPOSED", "timed", "check", "ratio_check", "figures_json", "all_met"]

T = TypeVar("T")
ISSUE = "issue 14"  # the benchmark-suite issue set this target
EARLIER = "earlier suite"  # the target the suite held before issue 14 (retrieval)
PROPOSED = "proposed"  # no issue set one: the benchmark's own, for the lead to confirm

TARGET_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
}


@dataclass(frozen=True)
class Figure:
    """One measured quantity over its repeats.

    Attributes:
        values: each repeat's value, in the order measured.
        unit: ``s``, ``pairs/s``, ``MiB``, ...
    """

    values: tuple[float, ...]
    unit: str

    def __post_init__(self) -> None:
        if not self.values:
            raise UserError(f"a figure needs at least one measured value (unit {self.unit})")

    @property
    def median(self) -> float:
        return float(statistics.median(self.values))

    @property
    def min(self) -> float:
        return float(min(self.values))

    @property
    def max(self) -> float:
        return float(max(self.values))

    def to_json(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "min": self.min,
            "max": self.max,
            "repeats": len(self.values),
            "unit": self.unit,
            "values": [float(v) for v in self.values],
        }


def timed(fn: Callable[[], T], repeats: int, sync: Callable[[], None] = lambda: None) -> tuple[T, Figure]:
    """Run ``fn`` ``repeats`` times; its last result and its wall times in seconds.

    Args:
        fn: the work to time.
        repeats: how many runs (at least one).
        sync: called before starting and before stopping the clock (a CUDA synchronise).
    """
    if repeats < 1:
        raise UserError(f"repeats must be at least 1, got {repeats}")
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return result, Figure(tuple(times), "s")


def check(name: str, value: float | None, op: str, target: float, unit: str = "", source: str = ISSUE, note: str = "") -> dict[str, Any]:
    """A value against its target: ``{"name", "value", "unit", "op", "target", "met", "source", "note"}``.

    Args:
        name: what is compared, as the report shows it.
        value: the measured value; None when it could not be measured (``met`` is then None and
            ``note`` must say why).
        op: one of :data:`TARGET_OPS`.
        target: the threshold.
        unit: the value's unit ("" for a ratio or a count).
        source: where the target comes from (:data:`ISSUE` or :data:`PROPOSED`).
        note: how the value was obtained, or why it is missing.
    """
    if op not in TARGET_OPS:
        raise UserError(f"unknown target operator {op!r}; known: {', '.join(TARGET_OPS)}")
    if value is None and not note:
        raise UserError(f"check '{name}': a missing value needs a note saying why")
    met = None if value is None else bool(TARGET_OPS[op](value, target))
    return {"name": name, "value": value, "unit": unit, "op": op, "target": target, "met": met, "source": source, "note": note}


def ratio_check(
    name: str, numerator: Figure, denominator: Figure, op: str, target: float, source: str = ISSUE, note: str = ""
) -> dict[str, Any]:
    """The ratio of two figures' medians (measured in the same process) against its target.

    Args:
        name: what the ratio says, e.g. ``"speed-up: loop reference / core.metrics"``.
        numerator: the figure on top.
        denominator: the figure below.
        op: one of :data:`TARGET_OPS`.
        target: the threshold.
        source: where the target comes from.
        note: how the figures were obtained.
    """
    if numerator.unit != denominator.unit:
        raise UserError(f"check '{name}': a ratio of {numerator.unit} to {denominator.unit} has no meaning")
    if denominator.median == 0:
        raise UserError(f"check '{name}': the denominator's median is 0")
    return check(name, numerator.median / denominator.median, op, target, "", source, note)


def figures_json(figures: dict[str, Figure]) -> dict[str, dict[str, Any]]:
    """``{name: Figure.to_json()}``, the ``figures`` entry of a benchmark's result."""
    return {name: fig.to_json() for name, fig in figures.items()}


def all_met(checks: Sequence[dict[str, Any]]) -> bool | None:
    """Whether every measured check met its target (None when none was measured)."""
    measured = [c["met"] for c in checks if c["met"] is not None]
    return all(measured) if measured else None
