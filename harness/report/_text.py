"""The table as Markdown (for a README or a lab notebook) and as CSV (for a spreadsheet)."""

from __future__ import annotations

import io
import re

import pandas as pd

from harness.report._format import Markup, caption_sentences, delta_cell, rows
from harness.report._labels import metric_label
from harness.report._power import MAX_SEEDS, Power, detectable
from harness.report._summary import StudyReport

__all__ = ["markdown_escape", "to_markdown", "to_csv", "power_lines"]

# CommonMark's and GitHub's specials: emphasis, code, links, HTML, headings, tables, strike, and
# $ (GitHub renders $...$ as math); each is shown as written when backslash-escaped
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>#|~^$])")
_MD_BREAKS = re.compile(r"[\r\n\u2028\u2029]+")  # a line break ends a table row


def markdown_escape(text: str) -> str:
    """Text that Markdown shows as written on one line (``l2_norm`` stays ``l2_norm``, ``a|b``
    stays in its cell, ``$5`` is no formula, a line break becomes a space).

    Args:
        text: any text.
    """
    return _MD_SPECIAL.sub(r"\\\1", _MD_BREAKS.sub(" ", text))


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
    if report.power:
        target = f"; `--detect {report.detect:g}`" if report.detect is not None else ""
        out += ["", f"**Power** (80% power, two-sided 5% level{target}):", "", *(f"- {line}" for line in power_lines(report))]
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
            **_power_record(report.power.get(row.arm) if not row.reference else None),
            "baseline": row.arm == report.view.baseline and not row.reference,
        }
        records.append(record)
    buffer = io.StringIO()
    pd.DataFrame(records).to_csv(buffer, index=False)
    return buffer.getvalue()


def power_lines(report: StudyReport) -> list[str]:
    """One sentence per comparison: the difference and its interval, the seed-to-seed sd, the
    smallest detectable difference at this n, and the seeds a ``--detect`` difference needs."""
    lines = []
    for arm, p in report.power.items():
        delta = report.deltas[arm]
        spread = f"seed sd {p.seed_sd:.1f} over {p.n} seeds" if p.seed_sd is not None else "seed sd unknown (1 seed)"
        noise = "" if p.seed_sd is not None else " (test noise only)"
        line = (
            f"{markdown_escape(arm)} vs {markdown_escape(report.view.baseline or '')}: Δ {delta.estimate:+.1f} "
            f"[{delta.low:+.1f}, {delta.high:+.1f}]; {spread}; test se {p.test_se:.1f}; "
            f"detectable at n = {p.n}: {p.detectable:.1f}{noise}"
        )
        lines.append(line + _needed(p) + ".")
    return lines


def _needed(p: Power) -> str:
    if p.target is None:
        return ""
    if p.seed_sd is None:
        return f"; for a difference of {p.target:g}, run at least 2 seeds to measure the seed noise"
    if p.seeds_for_target is None:
        floor = detectable(MAX_SEEDS, 0.0, p.test_se)
        return f"; a difference of {p.target:g} is out of reach: the test set alone allows no less than {floor:.1f}"
    return f"; a difference of {p.target:g} needs {p.seeds_for_target} seeds"


def _power_record(p: Power | None) -> dict:
    return {
        "rsum_seed_sd": p.seed_sd if p else None,
        "rsum_test_se": p.test_se if p else None,
        "rsum_detectable": p.detectable if p else None,
        "detect": p.target if p else None,
        "seeds_for_detect": p.seeds_for_target if p else None,
    }


def _line(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"

