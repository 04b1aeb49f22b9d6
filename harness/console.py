"""What ``harness run`` shows: the plan table, progress bars (or log lines), the summary table."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from core.metric_keys import RSUM
from harness.execute import Reporter, StudyResult, Task, TaskOutcome
from harness.plan import Plan
from harness.tracking import names

__all__ = ["print_plan", "print_summary", "print_submission", "print_status", "print_next_steps", "ProgressReporter", "LogReporter"]

# Off a terminal (a log file, CI, SLURM) rich would fold tables to 80 columns; a log has room.
VAL_RSUM, TEST_RSUM = names.val_metric(RSUM), names.test_metric(RSUM)
console = Console(width=None if sys.stdout.isatty() else 160)
log = logging.getLogger("harness")
PLAN_ROWS = 200  # tasks the dry-run table shows; a larger plan is summed up below it


def _stage_names(task: Task) -> str:
    return " -> ".join(stage.kind for stage in task.stages)


def print_plan(plan: Plan, tasks: list[Task], status: dict[str, str]) -> None:
    """The dry-run table: one row per task (the first :data:`PLAN_ROWS`), with what is cached,
    to run, or shared."""
    table = Table(title=f"Plan for study '{plan.study.name}'", title_justify="left")
    for column in ("arm", "seed", "stages", "status", "depends on", "shared by"):
        table.add_column(column)
    for task in tasks[:PLAN_ROWS]:
        states = {status.get(stage.hash, "todo") for stage in task.stages}
        state = "cached" if states == {"done"} else ("partial" if "partial" in states or "done" in states else "to run")
        users = {u for stage in task.stages for u in stage.users}
        shared = f"{len(users)} runs" if len(users) > 1 else ""
        depends = task.depends_on[:10] if task.depends_on else ""
        table.add_row(task.label, str(task.seed), _stage_names(task), state, depends, shared)
    console.print(table)
    if len(tasks) > PLAN_ROWS:
        console.print(f"(the first {PLAN_ROWS} of {len(tasks)} tasks are shown)")
    pretrains = sum(task.kind == "shared" for task in tasks)
    console.print(f"{len(plan.runs)} (arm, seed) runs, {pretrains} pre-trainings, {len(plan.stages)} stages")


def print_summary(result: StudyResult) -> None:
    """The end-of-run table: arm, seed, status, val rSum, test rSum, time."""
    table = Table(title=f"Study '{result.study.name}'", title_justify="left")
    for column in ("arm", "seed", "stage", "status", "val rsum", "test rsum", "time"):
        table.add_column(column, justify="right" if column in ("val rsum", "test rsum", "time") else "left")
    for outcome in result.outcomes:
        style = {"FAILED": "red", "FINISHED": "green"}.get(outcome.status, "")
        status = outcome.status + (" (cached)" if outcome.cached else "")
        table.add_row(
            outcome.task.label,
            str(outcome.task.seed),
            _stage_names(outcome.task),
            f"[{style}]{status}[/]",
            _fmt(outcome.metrics.get(VAL_RSUM)),
            _fmt(outcome.metrics.get(TEST_RSUM)),
            f"{outcome.seconds:.0f}s",
        )
    console.print(table)
    for outcome in result.failed:
        console.print(f"[red]FAILED[/] {outcome.task.label} seed {outcome.task.seed}: {outcome.error}", highlight=False)


def print_submission(submitted: list[Any]) -> None:
    """What ``harness run --executor slurm|submitit-local`` did per task: done already, queued
    already, submitted (job id), or ran (a local job: its status and rSum)."""
    table = Table(title="Jobs", title_justify="left")
    for column in ("arm", "seed", "stage", "state", "job", "val rsum", "test rsum"):
        table.add_column(column, justify="right" if "rsum" in column else "left")
    for item in submitted:
        metrics = item.outcome.metrics if item.outcome is not None else {}
        state = item.outcome.status if item.outcome is not None else item.state
        table.add_row(item.task.label, str(item.task.seed), _stage_names(item.task), state, item.job_id or "",
                      _fmt(metrics.get(VAL_RSUM)), _fmt(metrics.get(TEST_RSUM)))  # fmt: skip
    console.print(table)


def print_status(study: str, rows: list[dict[str, str]]) -> None:
    """``harness status``: one row per stage (the newest attempt in the store) or waiting job."""
    table = Table(title=f"Study '{study}'", title_justify="left")
    for column in ("arm", "seed", "stage", "state", "job", "run"):
        table.add_column(column)
    for row in rows:
        table.add_row(*(row[column] for column in ("arm", "seed", "stage", "state", "job", "run")))
    console.print(table)
    counts = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    console.print(", ".join(f"{n} {state}" for state, n in sorted(counts.items())))


def print_next_steps(study: str, tracking_uri: str, workdir: Path, options: str = "") -> None:
    """Where the results are and the two commands that show them.

    Args:
        study: the study's name.
        tracking_uri: the store the runs are in.
        workdir: the stage outputs' folder.
        options: ``--workdir`` / ``--tracking-uri`` as given to ``harness run``, repeated in the
            commands so they find the same store.
    """
    console.print(f"Runs: study '{study}' in the tracking store {tracking_uri}; checkpoints under {workdir / 'stages'}", highlight=False)
    console.print("Next:", highlight=False)
    console.print(f"  harness report {study} --latex{options}   # tables and plots -> reports/{study}/", highlight=False)
    console.print(f"  harness ui{options}   # browse the runs in the MLflow UI", highlight=False)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


class ProgressReporter(Reporter):
    """A study bar (tasks done / total, ETA) and a stage bar (epoch, step, loss, pairs/s)."""

    def __init__(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
        )
        self.study_bar = None
        self.stage_bar = None

    def __enter__(self) -> ProgressReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def start(self, tasks: list[Task]) -> None:
        self.study_bar = self.progress.add_task("study", total=len(tasks), info="")

    def task_started(self, task: Task) -> None:
        if self.stage_bar is not None:
            self.progress.remove_task(self.stage_bar)
        self.stage_bar = self.progress.add_task(f"{task.label} s{task.seed}", total=None, info="")

    def event(self, task: Task, event: Any) -> None:
        if self.stage_bar is None:
            return
        done = event.epoch * event.steps_per_epoch + event.step
        total = None
        info = f"{event.stage} epoch {event.epoch + 1}"
        if names.TRAIN_LOSS in event.metrics:
            info += f" loss {event.metrics[names.TRAIN_LOSS]:.3f}"
        if names.PAIRS_PER_S in event.metrics:
            info += f" {event.metrics[names.PAIRS_PER_S]:.0f} pairs/s"
        if VAL_RSUM in event.metrics:
            info += f" val rsum {event.metrics[VAL_RSUM]:.1f}"
        self.progress.update(self.stage_bar, completed=done, total=total, info=info)

    def task_waiting(self, outcome: TaskOutcome) -> None:
        if self.stage_bar is not None:
            self.progress.update(self.stage_bar, info=f"waiting: {outcome.error}")

    def task_finished(self, outcome: TaskOutcome) -> None:
        if self.study_bar is not None:
            self.progress.advance(self.study_bar)
            self.progress.update(self.study_bar, info=f"last: {outcome.task.label} {outcome.status}")


class LogReporter(Reporter):
    """``--quiet`` or not a terminal: one log line per epoch and per task, no bars."""

    def __enter__(self) -> LogReporter:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        self.started = time.time()
        self.waiting: set[str] = set()
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def start(self, tasks: list[Task]) -> None:
        log.info("%d tasks to run or replay", len(tasks))

    def task_started(self, task: Task) -> None:
        log.info("%s seed %d: started (%s)", task.label, task.seed, _stage_names(task))

    def event(self, task: Task, event: Any) -> None:
        if event.kind == "epoch":
            shown = {k: round(v, 3) for k, v in event.metrics.items() if k in (names.TRAIN_LOSS, VAL_RSUM, names.PAIRS_PER_S)}
            log.info("%s seed %d %s epoch %d %s", task.label, task.seed, event.stage, event.epoch, shown)

    def task_waiting(self, outcome: TaskOutcome) -> None:
        if outcome.task.key not in self.waiting:  # once per task: it is looked at every few seconds
            self.waiting.add(outcome.task.key)
            log.info("%s seed %d: waiting, %s (doing other tasks meanwhile)", outcome.task.label, outcome.task.seed, outcome.error)

    def task_finished(self, outcome: TaskOutcome) -> None:
        log.info("%s seed %d: %s%s", outcome.task.label, outcome.task.seed, outcome.status, " (cached)" if outcome.cached else "")
