"""The study's figures: the ablation plot and the training curves.

Figures are built with matplotlib's object API on an Agg canvas (no pyplot, no global backend
state), so a report renders the same headless, in a notebook or in a worker; a PDF is saved
through matplotlib's PDF backend. seaborn supplies the style and the palette.
"""

from __future__ import annotations

import math
import textwrap
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from harness.report._labels import human_name, metric_label
from harness.report._summary import StudyReport

__all__ = ["ablation_axis", "plot_ablation", "plot_training_curves"]

_SIZE = (6.0, 4.0)  # inches: a column of a two-column paper at 2x
_WRAP = 14  # characters per line of a categorical tick label
_ROTATION = 30  # degrees, when wrapped tick labels still collide
_LEGEND_ROWS = 12  # arms per column of the training curves' legend


def ablation_axis(report: StudyReport) -> tuple[str | None, bool]:
    """The ablation plot's x axis: (the config key, whether numeric), or (None, False) for one
    tick per arm label.

    ``plot: line`` puts ``report.x`` on the axis (numeric when every arm's value is a number);
    ``plot: bar`` with a single grid key puts that key's values on the axis as categories;
    anything else (explicit arms, several grid keys, no study file) one tick per arm.

    Args:
        report: the study's report.
    """
    view = report.view
    if view.spec.plot == "line" and view.spec.x:
        values = [view.arm_values.get(arm, {}).get(view.spec.x) for arm in view.arms]
        return view.spec.x, all(_is_number(v) for v in values)
    if len(view.vary) == 1 and not view.explicit_arms:
        return view.vary[0], False
    return None, False


def plot_ablation(report: StudyReport, metric: str) -> Figure | None:
    """The metric against the varied value, mean over seeds with sd error bars and the seeds as
    dots, and the baseline's mean as a dashed reference line. A numeric axis draws lines (one per
    combination of the other grid keys), a categorical one points. None when no run finished.

    Args:
        report: the study's report.
        metric: the metric key (its test split value is plotted).
    """
    values = report.values[report.values["metric"] == metric]
    if values.empty:
        return None
    key, numeric = ablation_axis(report)
    arms = [arm for arm in report.view.arms if arm in set(values["arm"])]
    stats = values.groupby("arm")["value"].agg(["mean", "std"]).reindex(arms)
    with _style():
        fig, ax = _figure()
        if numeric:
            _draw_numeric(ax, report, key, stats, values)
        else:
            _draw_categorical(ax, report, key, stats, values)
        _draw_baseline(ax, report, stats)
        ax.set_xlabel(human_name(key) if key else "Arm")
        ax.set_ylabel(f"{metric_label(metric)} ({report.split})")
        ax.set_title(report.view.name)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize="small")
        if not numeric:  # a numeric axis's locator spaces its ticks; arm labels may collide
            _untangle_ticks(fig, ax)
    return fig


def plot_training_curves(report: StudyReport, metric: str) -> Figure | None:
    """Validation ``metric`` per epoch, one line per arm (mean over seeds, sd band). None when
    no chosen run logged it.

    Args:
        report: the study's report.
        metric: the metric key (``val/<metric>`` is plotted).
    """
    history = report.history[report.history["metric"] == metric]
    if history.empty:
        return None
    arms = [arm for arm in report.view.arms if arm in set(history["arm"])]
    # Mean and sd over seeds per epoch, drawn directly: sns.lineplot took four times as long
    # (0.2 s a figure of 19 arms), most of a 1,000-run report's drawing time.
    stats = history.groupby(["arm", "epoch"])["value"].agg(["mean", "std"])
    with _style():
        fig, ax = _figure()
        for color, arm in zip(_palette(len(arms)), arms):
            curve = stats.loc[arm]
            epochs = curve.index.to_numpy() + 1  # logged from 0; readers count them from 1
            ax.plot(epochs, curve["mean"], marker="o", color=color, label=arm)
            if curve["std"].notna().any():  # one seed: no band
                low, high = curve["mean"] - curve["std"], curve["mean"] + curve["std"]
                ax.fill_between(epochs, low, high, color=color, alpha=0.2, linewidth=0)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("Epoch")
        ax.set_ylabel(f"Validation {metric_label(metric)}")
        ax.set_title(report.view.name)
        # a column holds _LEGEND_ROWS arms: more would run off the figure's foot
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), ncols=math.ceil(len(arms) / _LEGEND_ROWS))
    return fig


# ---------------------------------------------------------------------------------- internals
def _figure() -> tuple[Figure, Axes]:
    fig = Figure(figsize=_SIZE, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _palette(n: int) -> list:
    """seaborn's colours for ``n`` lines: the current palette, or evenly spaced hues when it has
    fewer colours than lines (as seaborn maps a hue)."""
    palette = sns.color_palette()
    return sns.color_palette(n_colors=n) if n <= len(palette) else sns.color_palette("husl", n)


@contextmanager
def _style():
    with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.2):
        yield


def _draw_numeric(ax: Axes, report: StudyReport, key: str, stats: pd.DataFrame, values: pd.DataFrame) -> None:
    view = report.view
    x = {arm: float(view.arm_values[arm][key]) for arm in stats.index}
    others = [k for k in view.vary if k != key]
    groups: dict[str, list[str]] = {}
    for arm in stats.index:
        name = ", ".join(f"{human_name(k)} = {view.arm_values[arm].get(k)}" for k in others)
        groups.setdefault(name, []).append(arm)
    palette = sns.color_palette(n_colors=max(1, len(groups)))
    for color, (name, arms) in zip(palette, groups.items()):
        arms = sorted(arms, key=x.get)
        ax.errorbar(
            [x[a] for a in arms], stats.loc[arms, "mean"], yerr=stats.loc[arms, "std"].fillna(0.0),
            marker="o", capsize=4, color=color, label=name or None,
        )
        seeds = values[values["arm"].isin(arms)]
        ax.scatter(seeds["arm"].map(x), seeds["value"], s=12, color=color, alpha=0.4, zorder=3)
    ax.set_xticks(sorted(set(x.values())))
    ax.set_xticklabels([_number(v) for v in sorted(set(x.values()))])


def _draw_categorical(
    ax: Axes, report: StudyReport, key: str | None, stats: pd.DataFrame, values: pd.DataFrame
) -> None:
    position = {arm: i for i, arm in enumerate(stats.index)}
    color = sns.color_palette(n_colors=1)[0]
    ax.errorbar(
        list(position.values()), stats["mean"], yerr=stats["std"].fillna(0.0),
        fmt="o", capsize=5, markersize=7, color=color,
    )
    ax.scatter(values["arm"].map(position), values["value"], s=12, color=color, alpha=0.4, zorder=3)
    names = [str(report.view.arm_values.get(arm, {}).get(key, arm)) if key else arm for arm in stats.index]
    ax.set_xticks(list(position.values()))
    ax.set_xticklabels([textwrap.fill(name, _WRAP) for name in names])
    ax.set_xlim(-0.6, len(position) - 0.4)


def _draw_baseline(ax: Axes, report: StudyReport, stats: pd.DataFrame) -> None:
    baseline = report.view.baseline
    if baseline in stats.index and not math.isnan(stats.at[baseline, "mean"]):
        ax.axhline(stats.at[baseline, "mean"], ls="--", lw=1, color="0.4", label=f"Baseline ({baseline})", zorder=1)


def _untangle_ticks(fig: Figure, ax: Axes) -> None:
    """Rotate the x tick labels when any two of them overlap."""
    if _overlapping(fig, ax):
        for label in ax.get_xticklabels():
            label.set(rotation=_ROTATION, horizontalalignment="right", rotation_mode="anchor")


def _overlapping(fig: Figure, ax: Axes) -> bool:
    fig.draw_without_rendering()  # places the labels without rasterising the figure
    renderer = fig.canvas.get_renderer()
    boxes = sorted(
        (label.get_window_extent(renderer) for label in ax.get_xticklabels() if label.get_text()),
        key=lambda box: box.x0,
    )
    return any(a.x1 > b.x0 for a, b in zip(boxes, boxes[1:]))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
