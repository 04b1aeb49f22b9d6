"""``harness report``: read the store, build each study's (or sweep's) report, write the files,
log the figures on the parent run. The only part of the report with effects."""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import multiprocessing.pool
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from matplotlib.figure import Figure
from threadpoolctl import threadpool_limits

from core.errors import UserError
from core.runtime import usable_cores
from harness.report._latex import to_latex
from harness.report._plots import plot_ablation, plot_training_curves
from harness.report._study import report_spec, study_view
from harness.report._summary import FINISHED, StudyReport, pick_runs, study_report
from harness.report._sweep import SweepReport, sweep_report
from harness.report._sweep_plots import SWEEP_FIGURES
from harness.report._sweep_tables import sweep_to_csv, sweep_to_latex, sweep_to_markdown
from harness.report._text import to_csv, to_markdown
from harness.tracking import names
from harness.tracking.read import (
    StoredStudy, load_ranks, log_figures, parent_kinds, stored_studies, stored_sweep, study_runs_frame, trials_frame,
)

__all__ = ["build_report", "load_reports", "load_sweep_report"]

N_RESAMPLES = 1000  # bootstrap resamples per interval
BOOTSTRAP_SEED = 0  # the same store gives the same intervals
_DPI = 200


def load_reports(
    tracking_uri: str,
    studies: Sequence[str] | None = None,
    metric: str | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    detect: float | None = None,
) -> list[StudyReport]:
    """Each study's report, from the tracking store alone.

    Args:
        tracking_uri: the MLflow tracking URI.
        studies: study names; None or empty: every study in the store.
        metric: the metric plotted (and added to the table when not among its columns); None:
            each study's first report metric.
        n_resamples: bootstrap resamples per delta interval.
        seed: seeds the bootstrap.
        detect: an rSum difference to plan for (the power lines give the seeds it needs).

    Raises:
        UserError: no store, no study, an unknown study (the message lists those in the store)
            or an unknown metric.
    """
    _check_metric(metric)
    return [_study_report(tracking_uri, s, metric, n_resamples, seed, detect) for s in stored_studies(tracking_uri, studies or None)]


def _check_metric(metric: str | None) -> None:
    if metric is not None and metric not in names.METRICS:
        raise UserError(f"unknown metric '{metric}'; metrics: {', '.join(names.METRICS)}")


def _study_report(tracking_uri: str, record: StoredStudy, metric, n_resamples, seed, detect) -> StudyReport:
    # The history only of the plotted metric: each is one store request per run.
    rows = study_runs_frame(tracking_uri, record, history=[names.val_metric(metric or report_spec(record).metrics[0])])
    view = study_view(record, rows)
    picked = pick_runs(rows, view)
    # Ranks are only read when there is a baseline to compare with.
    finished = picked.loc[picked["status"] == FINISHED, "run_id"] if view.baseline else []
    ranks = {run_id: load_ranks(tracking_uri, run_id) for run_id in finished}
    return study_report(view, rows, ranks, metric, n_resamples, seed=seed, detect=detect)


def build_report(
    tracking_uri: str,
    studies: Sequence[str] | None = None,
    out_dir: str | os.PathLike = "reports",
    latex: bool = False,
    standalone: bool = False,
    metric: str | None = None,
    log_to_store: bool = True,
    detect: float | None = None,
) -> list[Path]:
    """Write each study's tables and figures to ``out_dir/<study>/`` and log the figures on
    the study's parent run (artifact folder ``figures``). A name that is a sweep gets the sweep's
    report instead (:func:`write_sweep_report`).

    Files: ``table.md``, ``table.csv``, ``ablation.png`` (unless the study's ``report.plot`` is
    ``none``) and ``curves.png`` (validation metric per epoch), each when there is data to show;
    with ``latex`` or ``standalone`` the paper's files too: ``table.tex`` and each figure as PDF.

    Args:
        tracking_uri: the MLflow tracking URI.
        studies: study names; None or empty: every study in the store.
        out_dir: the folder holding one subfolder per study.
        latex: write ``table.tex`` and the figures as PDF.
        standalone: make ``table.tex`` a complete document that compiles with pdflatex
            (implies ``latex``).
        metric: the metric plotted; None: each study's first report metric.
        log_to_store: log the figures on the parent runs (so they show in the MLflow UI).
        detect: an rSum difference to plan for: each power line says how many seeds it needs.

    Returns:
        The files written, per study in the order above.

    Raises:
        UserError: as :func:`load_reports`.
    """
    # Forked before this process opens the store (_study_pool); none for a single study.
    with _fewer_collections(), _study_pool(0 if studies and len(set(studies)) == 1 else usable_cores(), tracking_uri) as pool:
        kinds = parent_kinds(tracking_uri)
        asked = list(dict.fromkeys(studies)) if studies else sorted(kinds)
        sweeps = [name for name in asked if kinds.get(name) == names.STAGE_SWEEP]
        plain = [name for name in asked if name not in sweeps]
        written = []
        if plain or not sweeps:  # nothing at all in the store: load_reports says so
            written += _write_studies(tracking_uri, plain or None, out_dir, latex, standalone, metric, log_to_store, detect, pool)
    for name in sweeps:
        written += write_sweep_report(tracking_uri, name, out_dir, latex, standalone, log_to_store)
    return written


def load_sweep_report(tracking_uri: str, name: str) -> SweepReport:
    """A sweep's report, from the tracking store alone.

    Args:
        tracking_uri: the MLflow tracking URI.
        name: the sweep's name.

    Raises:
        UserError: no store, or no such sweep there.
    """
    stored = stored_sweep(tracking_uri, name)
    trials, history = trials_frame(tracking_uri, stored)
    return sweep_report(stored, trials, history)


def write_sweep_report(
    tracking_uri: str,
    name: str,
    out_dir: str | os.PathLike = "reports",
    latex: bool = False,
    standalone: bool = False,
    log_to_store: bool = True,
) -> list[Path]:
    """Write a sweep's top-k table and figures to ``out_dir/<sweep>/`` and log the figures on
    its parent run.

    Files: ``table.md``, ``table.csv`` and ``history``, ``importances``, ``parallel``, ``slice`` as
    ``.png``, each when there is data to show; with ``latex`` or ``standalone``, ``table.tex`` and
    each figure as ``.pdf`` too.

    Args:
        tracking_uri: the MLflow tracking URI.
        name: the sweep's name.
        out_dir: the folder holding one subfolder per sweep.
        latex: write ``table.tex`` and the figures as PDF.
        standalone: make ``table.tex`` compile alone with pdflatex (implies ``latex``).
        log_to_store: log the figures on the parent run.

    Returns:
        The files written.
    """
    report = load_sweep_report(tracking_uri, name)
    folder = Path(out_dir) / report.name
    folder.mkdir(parents=True, exist_ok=True)
    tables = {"table.md": sweep_to_markdown(report), "table.csv": sweep_to_csv(report)}
    if latex or standalone:
        tables["table.tex"] = sweep_to_latex(report, standalone=standalone)
    written = []
    for file, text in tables.items():
        (folder / file).write_text(text, encoding="utf-8")
        written.append(folder / file)
    figures = {stem: draw(report) for stem, draw in SWEEP_FIGURES.items()}
    images = [path for stem, fig in figures.items() if fig is not None for path in _save(fig, folder / stem, latex or standalone)]
    if log_to_store and images:
        log_figures(tracking_uri, report.parent_run_id, images)
    return written + images


def _write_studies(tracking_uri, studies, out_dir, latex, standalone, metric, log_to_store, detect, pool) -> list[Path]:
    _check_metric(metric)
    # With a pool, each study is read, summarised and drawn in a process of its own: over many
    # studies, reading the store and drawing the figures take about as long as each other.
    jobs = [
        (tracking_uri, record, metric, detect, Path(out_dir), latex or standalone, standalone)
        for record in stored_studies(tracking_uri, studies or None)
    ]
    results = pool.starmap(_write_study, jobs, chunksize=1) if pool is not None else [_write_study(*job) for job in jobs]
    written = []
    for (_, record, *_), (tables, images) in zip(jobs, results):
        if log_to_store and images:
            log_figures(tracking_uri, record.parent_run_id, images)
        written += tables + images
    return written


def _write_study(tracking_uri, record, metric, detect, out_dir, latex, standalone) -> tuple[list[Path], list[Path]]:
    """Write one study's tables and figures; (tables, figures) written."""
    report = _study_report(tracking_uri, record, metric, N_RESAMPLES, BOOTSTRAP_SEED, detect)
    folder = out_dir / report.view.name
    folder.mkdir(parents=True, exist_ok=True)
    shown = metric or report.view.spec.metrics[0]
    tables = {"table.md": to_markdown(report), "table.csv": to_csv(report)}
    if latex:
        tables["table.tex"] = to_latex(report, standalone=standalone)
    for name, text in tables.items():
        (folder / name).write_text(text, encoding="utf-8")
    figures = {
        "ablation": plot_ablation(report, shown) if report.view.spec.plot != "none" else None,
        "curves": plot_training_curves(report, shown),
    }
    images = [path for stem, fig in figures.items() if fig is not None for path in _save(fig, folder / stem, latex)]
    return [folder / name for name in tables], images


@contextlib.contextmanager
def _study_pool(processes: int, tracking_uri: str) -> Iterator[multiprocessing.pool.Pool | None]:
    """``processes`` forked processes to write studies' reports in, or None (write them in this
    one) for fewer than two or where forking is not safe (outside Linux). Fork before opening
    the store, so that no connection is shared; everything is already imported, so starting one
    is cheap."""
    if processes < 2 or sys.platform != "linux":
        yield None
        return
    threads = max(1, usable_cores() // processes)
    with multiprocessing.get_context("fork").Pool(processes, initializer=_start_worker, initargs=(tracking_uri, threads)) as pool:
        yield pool


def _start_worker(tracking_uri: str, threads: int) -> None:
    """A worker's BLAS threads (its share of the cores) and its own first look at the store,
    while the parent looks up the studies. Two workers each running as many BLAS threads as
    there are cores made the bootstrap's matrix products 10 to 20 times slower (measured on
    2 cores: 4.7-7.4 s a study instead of 0.2-0.4 s)."""
    threadpool_limits(threads)
    with contextlib.suppress(Exception):  # the parent's own look reports a bad store
        parent_kinds(tracking_uri)


@contextlib.contextmanager
def _fewer_collections(young: int = 50_000) -> Iterator[None]:
    """Collect the youngest generation every ``young`` allocations instead of Python's 700: a
    report allocates many objects that live until its study is written (store rows, figure
    artists), and at 700 the collector spent a fifth of a 1,000-run report rescanning them."""
    before = gc.get_threshold()
    gc.set_threshold(young, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)


def _save(fig: Figure, stem: Path, pdf: bool) -> list[Path]:
    """The figure as PNG (the UI's, a README's), and as PDF for a paper when ``pdf``: drawing a
    figure again for its PDF was a quarter of a 1,000-run report's time."""
    png = stem.with_suffix(".png")
    # zlib level 1: a third of the encoding time of the default 6, for a somewhat larger file
    fig.savefig(png, dpi=_DPI, pil_kwargs={"compress_level": 1})
    if not pdf:
        return [png]
    paper = stem.with_suffix(".pdf")
    fig.set_layout_engine("none")  # the layout the PNG's save placed, not solved again for the PDF
    fig.savefig(paper, dpi=_DPI)
    return [png, paper]
