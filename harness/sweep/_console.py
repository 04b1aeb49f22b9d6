"""What ``harness sweep`` shows: a progress view while it runs, the top trials and the best values."""

from __future__ import annotations

import logging
from typing import Any

from optuna.trial import TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness.sweep._run import Snapshot, SweepReporter, SweepResult
from harness.sweep._storage import superseded
from harness.sweep._trial import FAIL_REASON

__all__ = ["SweepProgress", "SweepLog", "print_sweep_summary", "describe"]

console = Console()
log = logging.getLogger("harness.sweep")
TOP = 10  # rows of the end table


def describe(snap: Snapshot) -> str:
    """``4 complete · 1 pruned · 0 failed · 2 running · best 231.5 (trial 3)``."""
    c = snap.counts
    parts = [f"{c.complete} complete", f"{c.pruned} pruned", f"{c.failed} failed", f"{c.running} running"]
    if c.requeued:
        parts.append(f"{c.requeued} re-queued")
    if snap.best_value is not None:
        parts.append(f"best {snap.best_value:.2f} (trial {snap.best_trial})")
    return " · ".join(parts)


class SweepProgress(SweepReporter):
    """A bar of finished trials out of ``n_trials`` and the counts by state."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.fields[info]}"),
            console=console,
        )
        self.bar = None

    def __enter__(self) -> SweepProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def update(self, snap: Snapshot) -> None:
        if self.bar is None:
            self.bar = self.progress.add_task("sweep", total=snap.n_trials, info="")
        self.progress.update(self.bar, completed=snap.counts.finished, total=snap.n_trials, info=describe(snap))


class SweepLog(SweepReporter):
    """``--quiet`` or not a terminal: a log line whenever the counts change."""

    def __init__(self) -> None:
        self.last = None

    def __enter__(self) -> SweepLog:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        return self

    def update(self, snap: Snapshot) -> None:
        line = describe(snap)
        if line != self.last:
            total = "" if snap.n_trials is None else f"/{snap.n_trials}"
            log.info("sweep: %d%s finished: %s", snap.counts.finished, total, line)
            self.last = line


def print_sweep_summary(result: SweepResult) -> None:
    """The top trials by objective (then pruned and failed ones), and the best values."""
    spec = result.spec
    table = Table(title=f"Sweep '{spec.name}': {spec.objective.metric} ({spec.objective.direction})", title_justify="left")
    keys = list(spec.space)
    for column in ("trial", "state", spec.objective.metric, "epochs", *keys):
        table.add_column(column, justify="right" if column != "state" else "left")
    replaced = superseded(result.trials)
    shown = [t for t in result.trials if t.state.is_finished() and t.number not in replaced]
    sign = -1 if spec.objective.direction == "maximize" else 1
    complete = sorted((t for t in shown if t.state == TrialState.COMPLETE), key=lambda t: (sign * t.value, t.number))
    rest = [t for t in shown if t.state != TrialState.COMPLETE]
    for trial in (complete + rest)[:TOP]:
        style = {TrialState.COMPLETE: "green", TrialState.PRUNED: "yellow", TrialState.FAIL: "red"}[trial.state]
        value = f"{trial.value:.2f}" if trial.value is not None else ""
        table.add_row(
            str(trial.number), f"[{style}]{trial.state.name.lower()}[/]", value, str(len(trial.intermediate_values)),
            *(_show(trial.params.get(k)) for k in keys),
        )
    console.print(table)
    if result.best is not None:
        console.print(f"best: trial {result.best.number}, {spec.objective.metric} = {result.best.value:.2f}")
        for key, value in result.best.params.items():
            console.print(f"  {key} = {_show(value)}", highlight=False)
    for trial in rest:
        if trial.state == TrialState.FAIL:
            console.print(f"[red]FAILED[/] trial {trial.number}: {trial.user_attrs.get(FAIL_REASON, '')}", highlight=False)
    if result.exported is not None:
        console.print(f"wrote {result.exported} (harness run {result.exported})")
    for path in result.figures:
        console.print(f"wrote {path}")


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
