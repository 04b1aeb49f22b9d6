"""Cell text shared by the table renderers: numbers, deltas, and the table's rows in order."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from harness.report._bootstrap import Delta
from harness.report._summary import StudyReport

DECIMALS = 1


@dataclass(frozen=True)
class Cell:
    """One number of the table: ``text`` is plain (``70.1 ± 0.3``), ``rank`` 1 best, 2 second."""

    mean: float
    std: float
    rank: int

    def text(self, pm: str = "±", missing: str = "–") -> str:
        if math.isnan(self.mean):
            return missing
        if math.isnan(self.std):
            return f"{self.mean:.{DECIMALS}f}"
        return f"{self.mean:.{DECIMALS}f} {pm} {self.std:.{DECIMALS}f}"


@dataclass(frozen=True)
class Row:
    """One line of the table: a run arm (with its seed count and delta) or a reference."""

    arm: str
    reference: bool
    n: int
    cells: tuple[Cell, ...]
    delta: Delta | None


def rows(report: StudyReport) -> list[Row]:
    """The table's rows: the arms in the study's order, then the reference rows."""
    out = []
    for source in ("run", "reference"):
        part = report.cells[report.cells["source"] == source]
        for arm, cells in part.groupby("arm", sort=False):
            by_metric = cells.set_index("metric")
            row_cells = tuple(
                Cell(float(by_metric.at[m, "mean"]), float(by_metric.at[m, "std"]), int(by_metric.at[m, "rank"]))
                if m in by_metric.index
                else Cell(math.nan, math.nan, 0)
                for m in report.columns
            )
            n = int(cells["n"].max())
            reference = source == "reference"
            out.append(Row(arm, reference, n, row_cells, None if reference else report.deltas.get(arm)))
    return out


@dataclass(frozen=True)
class Markup:
    """How a renderer writes the few non-plain bits of its text."""

    escape: Callable[[str], str]  # plain text -> safe text
    code: Callable[[str], str]  # a name, set as code
    number: Callable[[str], str]  # a signed number
    pm: str  # ±
    delta: str  # Δ
    ns: str  # the not-significant marker
    dagger: str  # the reference marker
    percent: str
    missing: str  # a cell without a value
    baseline: str  # the baseline's delta cell


def delta_text(delta: Delta, markup: Markup) -> str:
    """``+3.2 [1.1, 5.0]``: the signed estimate and its interval, then the marker when the
    interval contains 0."""
    num = markup.number
    text = f"{num(f'{delta.estimate:+.{DECIMALS}f}')} [{num(f'{delta.low:.{DECIMALS}f}')}, {num(f'{delta.high:.{DECIMALS}f}')}]"
    return text + (markup.ns if delta.contains_zero else "")


def delta_cell(row: Row, baseline: str | None, markup: Markup) -> str:
    """The delta column of a row: empty for a reference, a word for the baseline."""
    if row.reference:
        return ""
    if row.arm == baseline:
        return markup.baseline
    return markup.missing if row.delta is None else delta_text(row.delta, markup)


def caption_sentences(report: StudyReport, markup: Markup) -> list[str]:
    """What a reader needs to read the table, as sentences in the renderer's markup."""
    view, esc = report.view, markup.escape
    split = {"test": "test split", "test5k": "5K test split", "test1k": "1K test (mean over 5 folds)"}[report.split]
    description = f": {esc(first_sentence(view.description))}" if view.description else "."
    out = [
        f"Study {markup.code(view.name)}{description}",
        f"Retrieval on the {split} (recalls in {markup.percent}), mean {markup.pm} sd over seeds; n: seeds per row.",
        "Best per column in bold, second underlined" + (", published rows excluded." if view.reference else "."),
    ]
    if report.deltas:
        out.append(
            f"{markup.delta}rSum: difference from the baseline {esc(view.baseline or '')}, with a"
            f" {report.level * 100:.0f}{markup.percent} CI from a paired bootstrap over test queries"
            f" ({report.n_resamples} resamples); {markup.ns}: the interval contains 0."
        )
    if view.reference:
        source = f": {esc(' '.join((view.reference_source or '').split()))}" if view.reference_source else ""
        out.append(f"{markup.dagger}Published numbers{source}.")
    return out


def first_sentence(text: str) -> str:
    """The text up to its first full stop (a caption holds a summary, not the whole description)."""
    text = " ".join(text.split())
    head, dot, _ = text.partition(". ")
    return head + "." if dot or not head.endswith(".") else head
