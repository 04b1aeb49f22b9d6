"""A sweep's figures: optimisation history, parameter importances, parallel coordinates, slices.

The data come from :class:`SweepReport` (built apart, like Optuna's ``_get_importances_infos``);
each function here only draws, with matplotlib's object API on an Agg canvas like the study plots.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from harness.report._labels import human_name, metric_label
from harness.report._plots import _figure, _style
from harness.report._sweep import SweepReport
from harness.tracking import names

__all__ = ["plot_history", "plot_importances", "plot_parallel", "plot_slice", "SWEEP_FIGURES"]

_CMAP = "viridis"


def _objective_label(report: SweepReport) -> str:
    return f"Validation {metric_label(report.objective.removeprefix(names.VAL_PREFIX))}"


def plot_history(report: SweepReport) -> Figure | None:
    """The objective of each complete trial by trial number, the best so far as a step line, and
    each pruned trial's last reported value. None when no trial reported anything."""
    complete = report.complete.sort_values("trial")
    last = report.history.sort_values("epoch").groupby("trial").last()
    pruned = last[last["state"] == "pruned"]
    if complete.empty and pruned.empty:
        return None
    with _style():
        fig, ax = _figure()
        if not pruned.empty:
            ax.scatter(pruned.index, pruned["value"], marker="x", color="0.55", label="pruned (last epoch reported)", zorder=2)
        if not complete.empty:
            ax.scatter(complete["trial"], complete["value"], color="C0", label="complete", zorder=3)
            best = complete["value"].cummax() if report.maximize else complete["value"].cummin()
            last = int(report.trials["trial"].max())  # the line runs on to the last trial, pruned or not
            xs, ys = [*complete["trial"], last], [*best, best.iloc[-1]]
            ax.step(xs, ys, where="post", color="C3", label="best so far", zorder=1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("Trial")
        ax.set_ylabel(_objective_label(report))
        ax.set_title(f"{report.name}: optimisation history")
        ax.legend(loc="best", fontsize="small")
    return fig


def plot_importances(report: SweepReport) -> Figure | None:
    """fANOVA importance of each parameter, largest on top. None when not computable."""
    if not report.importances:
        return None
    keys = list(report.importances)[::-1]
    with _style():
        fig, ax = _figure()
        ax.barh([human_name(k) for k in keys], [report.importances[k] for k in keys], color="C0")
        for y, key in enumerate(keys):
            ax.text(report.importances[key], y, f" {report.importances[key]:.2f}", va="center", fontsize="small")
        ax.set_xlim(0, max(report.importances.values()) * 1.2 or 1)
        ax.set_xlabel(f"Importance for the {_objective_label(report)} (fANOVA)")
        ax.set_title(f"{report.name}: parameter importances")
    return fig


def plot_parallel(report: SweepReport) -> Figure | None:
    """One vertical axis per parameter and one for the objective, a line per complete trial,
    coloured by its objective. None without two complete trials."""
    complete = report.complete
    if len(complete) < 2 or not report.keys:
        return None
    columns = [(human_name(k), [_position(report, k, p.get(k)) for p in complete["params"]], _ends(report, k)) for k in report.keys]
    values = complete["value"].to_numpy(float)
    columns.append((_objective_label(report), list(_unit(values)), (f"{values.min():.1f}", f"{values.max():.1f}")))
    colors = colormaps[_CMAP](_unit(values))
    x = np.arange(len(columns))
    with _style():
        fig, ax = _figure()
        data = np.array([c[1] for c in columns], dtype=float)  # (axes, trials)
        for j in np.argsort(values if report.maximize else -values):  # best drawn last, on top
            ax.plot(x, data[:, j], color=colors[j], alpha=0.8, lw=1.5)
        for i, (_, _, (low, high)) in enumerate(columns):
            ax.axvline(i, color="0.3", lw=0.8)
            ax.text(i, -0.04, low, ha="center", va="top", fontsize="x-small")
            ax.text(i, 1.04, high, ha="center", va="bottom", fontsize="x-small")
        ax.set_xticks(x)
        ax.set_xticklabels([c[0] for c in columns], rotation=20, ha="right", fontsize="small")
        ax.set_yticks([])
        ax.set_ylim(-0.15, 1.15)
        ax.grid(False)
        ax.set_title(f"{report.name}: parallel coordinates (complete trials)")
    return fig


def plot_slice(report: SweepReport) -> Figure | None:
    """The objective against each parameter, one panel per parameter, dots coloured by trial
    number. None when no trial completed."""
    complete = report.complete
    if complete.empty or not report.keys:
        return None
    n = len(report.keys)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    with _style():
        fig = Figure(figsize=(3.2 * cols, 2.8 * rows + 0.4), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        for ax, key in zip(axes, report.keys):
            values = [p.get(key) for p in complete["params"]]
            dist = report.distributions.get(key)
            if isinstance(dist, CategoricalDistribution):
                xs = [list(dist.choices).index(v) if v in dist.choices else np.nan for v in values]
                ax.set_xticks(range(len(dist.choices)))
                ax.set_xticklabels([str(c) for c in dist.choices], fontsize="small")
            else:
                xs = values
                if getattr(dist, "log", False):
                    ax.set_xscale("log")
            points = ax.scatter(xs, complete["value"], c=complete["trial"], cmap=_CMAP, s=22, edgecolor="none")
            ax.set_xlabel(human_name(key))
        for ax in axes[n:]:
            ax.set_visible(False)
        axes[0].set_ylabel(_objective_label(report))
        fig.colorbar(points, ax=list(axes[:n]), label="Trial", shrink=0.9)
        fig.suptitle(f"{report.name}: objective against each parameter")
    return fig


def _unit(values: np.ndarray) -> np.ndarray:
    low, high = np.nanmin(values), np.nanmax(values)
    return np.full_like(values, 0.5) if high == low else (values - low) / (high - low)


def _position(report: SweepReport, key: str, value: Any) -> float:
    """A value's height on its axis in [0, 1]: log-scaled for log ranges, by index for choices."""
    dist = report.distributions.get(key)
    if isinstance(dist, CategoricalDistribution):
        choices = list(dist.choices)
        return choices.index(value) / max(1, len(choices) - 1) if value in choices else np.nan
    if isinstance(dist, (FloatDistribution, IntDistribution)) and dist.high > dist.low:
        scale = np.log if dist.log else (lambda v: v)
        return float((scale(value) - scale(dist.low)) / (scale(dist.high) - scale(dist.low)))
    observed = pd.to_numeric(pd.Series([p.get(key) for p in report.complete["params"]]), errors="coerce")
    span = observed.max() - observed.min()
    return 0.5 if not span else float((value - observed.min()) / span)


def _ends(report: SweepReport, key: str) -> tuple[str, str]:
    dist = report.distributions.get(key)
    if isinstance(dist, CategoricalDistribution):
        return str(dist.choices[0]), str(dist.choices[-1])
    if isinstance(dist, (FloatDistribution, IntDistribution)):
        return f"{dist.low:g}", f"{dist.high:g}"
    observed = [p.get(key) for p in report.complete["params"]]
    return f"{min(observed):g}", f"{max(observed):g}"


SWEEP_FIGURES = {  # file stem -> drawing function
    "history": plot_history,
    "importances": plot_importances,
    "parallel": plot_parallel,
    "slice": plot_slice,
}
