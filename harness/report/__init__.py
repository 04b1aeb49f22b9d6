"""Reports from the tracking store: paper-style tables (.tex, .md, .csv) with seed spread, the
rSum delta against the baseline with a paired bootstrap interval, and the study's figures; for a
sweep, its top-k trials and its figures (history, importances, parallel coordinates, slices).

One function turns the store into a tidy frame (``harness.tracking.read.runs_frame``); a study's
:class:`StudyReport` is computed from it (``load_reports``); each renderer is a function of that.
"""

from harness.report._bootstrap import Delta, paired_bootstrap_rsum, rsum_scores
from harness.report._build import build_report, load_reports, load_sweep_report, write_sweep_report
from harness.report._labels import human_name, metric_label
from harness.report._latex import latex_escape, to_latex
from harness.report._plots import ablation_axis, plot_ablation, plot_training_curves
from harness.report._study import StudyView, study_view
from harness.report._summary import Problem, StudyReport, pick_runs, study_report, summarise, table_columns
from harness.report._sweep import SweepReport, sweep_report
from harness.report._sweep_plots import plot_history, plot_importances, plot_parallel, plot_slice
from harness.report._sweep_tables import sweep_table, sweep_to_csv, sweep_to_latex, sweep_to_markdown
from harness.report._text import markdown_escape, to_csv, to_markdown

__all__ = [
    "build_report", "load_reports", "load_sweep_report", "write_sweep_report",
    "SweepReport", "sweep_report", "sweep_table", "sweep_to_latex", "sweep_to_markdown", "sweep_to_csv",
    "plot_history", "plot_importances", "plot_parallel", "plot_slice",
    "StudyView", "study_view", "StudyReport", "Problem", "study_report", "pick_runs", "summarise", "table_columns",
    "Delta", "paired_bootstrap_rsum", "rsum_scores",
    "to_latex", "to_markdown", "to_csv", "latex_escape", "markdown_escape",
    "plot_ablation", "plot_training_curves", "ablation_axis",
    "human_name", "metric_label",
]
