"""A sweep's top-k table as LaTeX (booktabs), Markdown and CSV: rank, trial, objective, the test
rSum at the trial's checkpoint, epochs trained, and the trial's values of each searched key."""

from __future__ import annotations

import io
from typing import Any

import pandas as pd

from core.metric_keys import RSUM
from harness.report._labels import metric_label
from harness.report._latex import STANDALONE, latex_escape
from harness.report._sweep import SweepReport
from harness.report._text import markdown_escape
from harness.tracking import names

__all__ = ["sweep_table", "sweep_to_latex", "sweep_to_markdown", "sweep_to_csv"]


def sweep_table(report: SweepReport) -> pd.DataFrame:
    """The top-k rows as plain values: ``rank, trial, <objective>, test/rsum, epochs, <keys...>``.

    Args:
        report: the sweep's report.
    """
    rows = [
        {
            "rank": rank,
            "trial": int(row.trial),
            report.objective: row.value,
            names.test_metric(RSUM): row.test_rsum,
            "epochs": int(row.epochs),
            **{key: row.params.get(key) for key in report.keys},
        }
        for rank, row in enumerate(report.top.itertuples(), start=1)
    ]
    return pd.DataFrame(rows, columns=["rank", "trial", report.objective, names.test_metric(RSUM), "epochs", *report.keys])


def _caption(report: SweepReport) -> str:
    total = len(report.trials)
    states = report.trials["state"].value_counts()
    shown = len(report.top)
    goal = "highest" if report.maximize else "lowest"
    return (
        f"Sweep {report.name}: the {shown} trials with the {goal} {_objective(report)} of {total}"
        f" ({states.get('complete', 0)} complete, {states.get('pruned', 0)} pruned, {states.get('failed', 0)} failed)."
        " Test rSum at each trial's selected checkpoint, for reference only: trials were chosen on validation."
    )


def _objective(report: SweepReport) -> str:
    return f"validation {metric_label(report.objective.removeprefix(names.VAL_PREFIX))}"


def _cell(value: Any, metric: bool = False) -> str:
    """A metric with one decimal (recalls in percent), a parameter with four significant digits."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        return f"{value:.1f}" if metric else f"{value:.4g}"
    return str(value)


def sweep_to_latex(report: SweepReport, standalone: bool = False) -> str:
    """The top-k table as a LaTeX ``table`` (needs ``booktabs``).

    Args:
        report: the sweep's report.
        standalone: wrap it in a minimal document that compiles with pdflatex.
    """
    table = sweep_table(report)
    keys = [rf"\texttt{{{latex_escape(k)}}}" for k in report.keys]
    header = ["\\#", "Trial", latex_escape(metric_label(report.objective.removeprefix(names.VAL_PREFIX))) + " (val)", "rSum (test)", "Epochs", *keys]
    best = table[report.objective].iloc[0] if len(table) else None
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{latex_escape(_caption(report))}}}",
        rf"\label{{tab:{report.name}}}",
        rf"\begin{{tabular}}{{@{{}}rr{'r' * 3}{'c' * len(keys)}@{{}}}}",
        r"\toprule",
        " & ".join(header) + r" \\",
        r"\midrule",
    ]
    for row in table.itertuples(index=False):
        values = list(row)
        objective = _cell(values[2], metric=True)
        if best is not None and values[2] == best:
            objective = rf"\textbf{{{objective}}}"
        cells = [str(values[0]), str(values[1]), objective, _cell(values[3], metric=True), str(values[4])]
        cells += [latex_escape(_cell(v)) for v in values[5:]]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if report.notes:
        lines += [r"\par\smallskip", rf"{{\footnotesize Notes: {latex_escape('; '.join(report.notes))}.\par}}"]
    lines.append(r"\end{table}")
    body = "\n".join(lines) + "\n"
    return STANDALONE % body if standalone else body


def sweep_to_markdown(report: SweepReport) -> str:
    """The top-k table as GitHub Markdown, the best objective in bold, the caption under it.

    Args:
        report: the sweep's report.
    """
    table = sweep_table(report)
    header = ["#", "Trial", f"{metric_label(report.objective.removeprefix(names.VAL_PREFIX))} (val)", "rSum (test)", "Epochs"]
    header += [f"`{k}`" for k in report.keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---:"] * len(header)) + "|"]
    for i, row in enumerate(table.itertuples(index=False)):
        values = list(row)
        objective = f"**{_cell(values[2], metric=True)}**" if i == 0 else _cell(values[2], metric=True)
        cells = [str(values[0]), str(values[1]), objective, _cell(values[3], metric=True), str(values[4])]
        cells += [markdown_escape(_cell(v)) for v in values[5:]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", markdown_escape(_caption(report))]
    lines += [f"Note: {markdown_escape(note)}." for note in report.notes]
    return "\n".join(lines) + "\n"


def sweep_to_csv(report: SweepReport) -> str:
    """The top-k table as CSV, full precision, one column per searched key.

    Args:
        report: the sweep's report.
    """
    buffer = io.StringIO()
    sweep_table(report).to_csv(buffer, index=False)
    return buffer.getvalue()
