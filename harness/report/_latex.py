"""The table as LaTeX: booktabs rules, I2T / T2I column groups, a caption and a label.

Every piece of text (arm labels, the study's description, the reference's source, the notes)
goes through :func:`latex_escape`; numbers and markup are written by the renderer itself.
"""

from __future__ import annotations

import re

from harness.report._format import Markup, Row, caption_sentences, delta_cell, rows
from harness.report._labels import metric_label
from harness.report._summary import StudyReport

__all__ = ["latex_escape", "to_latex"]

_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "|": r"\textbar{}",
    # Symbols that labels use and pdflatex's text fonts lack.
    "±": r"$\pm$",
    "×": r"$\times$",
    "≤": r"$\leq$",
    "≥": r"$\geq$",
    "Δ": r"$\Delta$",
    "α": r"$\alpha$",
    "β": r"$\beta$",
    "γ": r"$\gamma$",
    "λ": r"$\lambda$",
    "μ": r"$\mu$",
    "σ": r"$\sigma$",
    "τ": r"$\tau$",
}
_SPECIAL = re.compile("|".join(re.escape(c) for c in _ESCAPES))
_GROUPS = (("i2t", "I2T"), ("t2i", "T2I"))
_NS = r"\textsuperscript{ns}"
_DAGGER = r"\textsuperscript{\dag}"

STANDALONE = r"""\documentclass{article}
\usepackage[T1]{fontenc}
\usepackage{booktabs}
\usepackage[landscape,margin=1.5cm]{geometry}
\pagestyle{empty}
\begin{document}
%s\end{document}
"""


def latex_escape(text: str) -> str:
    """Text safe in LaTeX's text mode: ``l2_norm`` -> ``l2\\_norm``, ``50%`` -> ``50\\%``.

    Args:
        text: any text.
    """
    return _SPECIAL.sub(lambda match: _ESCAPES[match.group()], text)


MARKUP = Markup(
    escape=latex_escape,
    code=lambda name: rf"\texttt{{{latex_escape(name)}}}",
    number=lambda number: f"${number}$",
    pm=r"$\pm$",
    delta=r"$\Delta$",
    ns=_NS,
    dagger=_DAGGER,
    percent=r"\%",
    missing="--",
    baseline=r"\emph{baseline}",
)


def to_latex(report: StudyReport, standalone: bool = False) -> str:
    """The study's table as a LaTeX ``table`` (needs ``booktabs``).

    Args:
        report: the study's report.
        standalone: wrap it in a minimal document that compiles with pdflatex.
    """
    table_rows = rows(report)
    with_delta = bool(report.deltas)
    n_cols = 2 + len(report.columns) + with_delta
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{' '.join(caption_sentences(report, MARKUP))}}}",
        rf"\label{{tab:{report.view.name}}}",
        rf"\begin{{tabular}}{{@{{}}lr{'c' * (n_cols - 2)}@{{}}}}",
        r"\toprule",
        *_header(report, with_delta),
        r"\midrule",
        *(_row(row, report, with_delta) for row in table_rows if not row.reference),
    ]
    references = [_row(row, report, with_delta) for row in table_rows if row.reference]
    if references:
        lines += [r"\midrule", rf"\multicolumn{{{n_cols}}}{{@{{}}l}}{{\emph{{Published}}{_DAGGER}}} \\", *references]
    lines += [r"\bottomrule", r"\end{tabular}"]
    for title, items in (("Not in the table", [p.describe() for p in report.problems]), ("Notes", report.notes)):
        if items:
            lines += [r"\par\smallskip", rf"{{\footnotesize {title}: {latex_escape('; '.join(items))}.\par}}"]
    lines.append(r"\end{table}")
    body = "\n".join(lines) + "\n"
    return STANDALONE % body if standalone else body


def _header(report: StudyReport, with_delta: bool) -> list[str]:
    """Two header lines: the I2T / T2I groups over their columns, then the metric names."""
    groups, rules, col = [], [], 3  # columns 1-2: arm, n
    for prefix, title in _GROUPS:
        width = sum(m.startswith(prefix) for m in report.columns)
        groups.append(rf"\multicolumn{{{width}}}{{c}}{{{title}}}")
        rules.append(rf"\cmidrule(lr){{{col}-{col + width - 1}}}")
        col += width
    tail = " &" * (1 + with_delta)  # rSum and the delta sit under no group
    names = [metric_label(m).split(" ")[-1] for m in report.columns]
    delta = rf" & $\Delta$rSum [{report.level * 100:.0f}\% CI]" if with_delta else ""
    return [
        " & & " + " & ".join(groups) + tail + r" \\",
        " ".join(rules),
        "Arm & $n$ & " + " & ".join(names) + delta + r" \\",
    ]


def _row(row: Row, report: StudyReport, with_delta: bool) -> str:
    label = latex_escape(row.arm) + (_DAGGER if row.reference else "")
    cells = [
        {1: rf"\textbf{{{text}}}", 2: rf"\underline{{{text}}}"}.get(cell.rank, text)
        for cell in row.cells
        for text in [cell.text(MARKUP.pm, MARKUP.missing)]
    ]
    if with_delta:
        cells.append(delta_cell(row, report.view.baseline, MARKUP))
    return " & ".join([label, "--" if row.reference else str(row.n), *cells]) + r" \\"

