"""The table as Markdown (for a README or a lab notebook) and as CSV (for a spreadsheet)."""

from __future__ import annotations

import io
import re

import pandas as pd

from harness.report._format import Markup, caption_sentences, delta_cell, rows
from harness.report._labels import metric_label
from harness.report._summary import StudyReport

__all__ = ["markdown_escape", "to_markdown", "to_csv"]

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~^])")


def markdown_escape(text: str) -> str:
    """Text that Markdown shows as written (``l2_norm`` stays ``l2_norm``, ``a|b`` stays in its cell).

    Args:
        text: any text.
    """
    return _MD_SPECIAL.sub(r"\\\1", text)


MARKUP = Markup(
    escape=markdown_escape,
    code=lambda name: f"`{name}`",
    number=str,
    pm="±",
    delta="Δ",
    ns="<sup>ns</sup>",
    dagger="†",
    percent="%",
    missing="–",
    baseline="*baseline*",
)


def to_markdown(report: StudyReport) -> str:
    """The study's table as GitHub Markdown: bold best, underlined (``<u>``) second, the caption
    and the missing runs under it.

    Args:
        report: the study's report.
    """
    with_delta = bool(report.deltas)
    header = ["Arm", "n", *(metric_label(m) for m in report.columns)]
    if with_delta:
        header.append(f"ΔrSum [{report.level * 100:.0f}% CI]")
    lines = [_line(header), _line(["---", "---:", *(":---:" for _ in header[2:])])]
    for row in rows(report):
        cells = [
            {1: f"**{text}**", 2: f"<u>{text}</u>"}.get(cell.rank, text)
            for cell in row.cells
            for text in [cell.text(MARKUP.pm, MARKUP.missing)]
        ]
        if row.reference:
            line = [f"{markdown_escape(row.arm)} †", "–", *cells]
        else:
            line = [markdown_escape(row.arm), str(row.n), *cells]
        if with_delta:
            line.append(delta_cell(row, report.view.baseline, MARKUP))
        lines.append(_line(line))
    out = [f"### {markdown_escape(report.view.name)}", "", *lines, "", " ".join(caption_sentences(report, MARKUP))]
    if report.problems:
        out += ["", "**Not in the table:**", "", *(f"- {markdown_escape(p.describe())}" for p in report.problems)]
    if report.notes:
        out += ["", "**Notes:**", "", *(f"- {markdown_escape(note)}" for note in report.notes)]
    return "\n".join(out) + "\n"


def to_csv(report: StudyReport) -> str:
    """The study's table as CSV, one row per arm (then per reference row), numbers unrounded:
    ``<metric>_mean``, ``<metric>_std``, ``<metric>_rank`` per column, and the rSum delta with
    its interval.

    Args:
        report: the study's report.
    """
    records = []
    for row in rows(report):
        record = {"study": report.view.name, "arm": row.arm, "source": "reference" if row.reference else "run"}
        record["n"] = None if row.reference else row.n
        for metric, cell in zip(report.columns, row.cells):
            record |= {f"{metric}_mean": cell.mean, f"{metric}_std": cell.std, f"{metric}_rank": cell.rank}
        delta = row.delta
        record |= {
            "rsum_delta": delta.estimate if delta else None,
            "rsum_delta_low": delta.low if delta else None,
            "rsum_delta_high": delta.high if delta else None,
            "rsum_delta_contains_zero": delta.contains_zero if delta else None,
            "baseline": row.arm == report.view.baseline and not row.reference,
        }
        records.append(record)
    buffer = io.StringIO()
    pd.DataFrame(records).to_csv(buffer, index=False)
    return buffer.getvalue()


def _line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"

