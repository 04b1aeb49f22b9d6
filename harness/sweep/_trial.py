"""One trial: a harness run of one arm (the sampled values on top of the spec's base), planned and
executed by the same machinery as ``harness run``.

The trial's arm is labelled ``trial <n>``; its pre-training is labelled ``shared``, so a space that
touches only fine-tuning keys has one pre-training for the whole sweep: the first trial trains it,
every later one finds its stage done (workers racing for it wait on the task's lock). Each epoch of
the stage the objective is read from (fine-tuning, or pre-training when fine-tuning is off) is
reported to Optuna; when the pruner says so, the callback raises ``TaskStopped``: the stage keeps
its epoch checkpoint, is not marked done, and the trial's run is closed KILLED, tagged pruned.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from core.errors import UserError
from core.stages import STAGES
from harness._local import RECORD, read_record
from harness.execute import SHARED_LABEL, Task, TaskContext, TaskOutcome, TaskStopped, execute_task, plan_tasks
from harness.plan import Plan, make_plan, stage_dir
from harness.study import ArmSpec, Study
from harness.sweep._spec import SweepSpec
from harness.sweep._space import suggest
from harness.sweep._storage import FAIL_REASON, REQUEUE_OF, ROOT, TRACEBACK
from harness.tracking import Tracker, names

__all__ = ["TrialResult", "run_trial", "tell", "trial_study", "MLFLOW_RUN", "WORKER"]

MLFLOW_RUN = "mlflow_run_id"  # user attr: the trial's tracking run
WORKER = "worker"  # user attr: host:pid of the process that ran it
_TRACEBACK_CHARS = 4000  # user attrs are small; the whole traceback is the run's artifact


@dataclass(frozen=True)
class TrialResult:
    """What to tell Optuna: the state, the objective (complete trials) and why (failed ones)."""

    state: TrialState
    value: float | None = None
    reason: str | None = None
    traceback: str | None = None
    run_id: str | None = None


def trial_study(spec: SweepSpec, label: str, values: Mapping[str, Any]) -> Study:
    """The one-arm study a trial runs: the spec's setting and base, the trial's values, the first seed.

    Args:
        spec: the sweep spec.
        label: the arm's label (``trial <n>``).
        values: ``{dotted.key: value}`` sampled for the trial.
    """
    return Study(
        name=spec.name,
        description=spec.description,
        setting=spec.setting,
        base=dict(spec.base),
        arms=(ArmSpec(label=label, set=dict(values)),),
        seeds=(spec.seeds[0],),
    )


def run_trial(spec: SweepSpec, trial: optuna.Trial, ctx: TaskContext, overrides: Mapping[str, Any]) -> TrialResult:
    """Sample the trial's values and run them as a harness run; never raises for a bad trial.

    Args:
        spec: the sweep spec.
        trial: the running trial (taken from the queue).
        ctx: the sweep's task context (workdir, store, parent run).
        overrides: ``--set`` values applied to every trial.
    """
    trial.set_user_attr(WORKER, f"{socket.gethostname()}:{os.getpid()}")
    try:
        values = suggest(trial, spec.distributions())
        label = names.trial_label(int(trial.user_attrs.get(ROOT, trial.number)))
        plan = make_plan(trial_study(spec, label, values), overrides)
    except UserError as err:  # a sampled value the config refuses
        return TrialResult(TrialState.FAIL, reason=str(err))
    run = plan.runs[0]
    # the objective is the last training stage's validation metric (fine-tuning, when enabled)
    objective_stage = next(h for h in reversed(run.chain) if STAGES[plan.stages[h].kind].trains)
    kind = plan.stages[objective_stage].kind
    tags = {
        names.TAG_TRIAL: trial.number,
        names.TAG_TRIAL_STATE: "running",
        names.TAG_TRIAL_PARAMS: json.dumps(values, sort_keys=True),
        **({names.TAG_REQUEUE_OF: trial.user_attrs[REQUEUE_OF]} if REQUEUE_OF in trial.user_attrs else {}),
    }
    reporter = _Reporter(trial, spec.objective.metric)
    outcome: TaskOutcome | None = None
    for task in _tasks(plan):
        has_objective = any(stage.hash == objective_stage for stage in task.stages)
        on_event = reporter.on_event(kind) if has_objective else _ignore
        outcome = execute_task(task, ctx, None, on_event, tags=tags if task.kind == "arm" else None)
        if outcome.status != "FINISHED":
            break
    select_metric = plan.stages[objective_stage].config.eval.select_metric
    result = _result(outcome, reporter, ctx, objective_stage, select_metric, spec.objective.key)
    if result.run_id is not None:
        _tag_run(ctx, result, trial.number)
    return result


def _tasks(plan: Plan) -> list[Task]:
    """The plan's tasks with every pre-training labelled ``shared``: the next trial finds it."""
    return [replace(task, label=SHARED_LABEL) if task.kind == "shared" else task for task in plan_tasks(plan)]


def _result(
    outcome: TaskOutcome, reporter: _Reporter, ctx: TaskContext, objective_stage: str, select_metric: str, metric: str
) -> TrialResult:
    if outcome.status == "STOPPED":
        return TrialResult(TrialState.PRUNED, reason=outcome.error, run_id=outcome.run_id)
    if outcome.status != "FINISHED":
        trace = (outcome.traceback or "")[-_TRACEBACK_CHARS:] or None
        return TrialResult(TrialState.FAIL, reason=outcome.error, traceback=trace, run_id=outcome.run_id)
    history, best = _stage_outcome(ctx, outcome.run_id, objective_stage, select_metric)
    # Epochs no event reported (a cached stage, or epochs before a resume): reported, not pruned on.
    for epoch, values in enumerate(history):
        if reporter.metric in values:
            reporter.report(epoch, values[reporter.metric], prune=False)
    value = best.get(metric)
    if value is None:
        return TrialResult(TrialState.FAIL, reason=f"the stage recorded no val/{metric}", run_id=outcome.run_id)
    return TrialResult(TrialState.COMPLETE, float(value), run_id=outcome.run_id)


def _stage_outcome(
    ctx: TaskContext, run_id: str | None, digest: str, select_metric: str
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """The objective stage's per-epoch history and its best validation metrics (unprefixed): from
    the stage's record here, or, when it finished in another workdir sharing the store, from its
    tracking run (the selected epoch: the first best ``val/<select_metric>``, as the trainer picks)."""
    if (stage_dir(Path(ctx.workdir), digest) / RECORD).is_file():
        record = read_record(Path(ctx.workdir), digest)
        return record.history, record.best
    if run_id is None:
        return [], {}
    history, best = Tracker(ctx.tracking_uri).selected_validation(run_id, select_metric)
    return history, {name.removeprefix(names.VAL_PREFIX): value for name, value in best.items()}


class _Reporter:
    """Reports the objective metric per epoch and asks the pruner (steps = epochs, from 0)."""

    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial, self.metric = trial, metric
        self.reported: set[int] = set()

    def on_event(self, stage: str) -> Callable[[Any], None]:
        def receive(event: Any) -> None:
            if event.kind == "epoch" and event.stage == stage and self.metric in event.metrics:
                self.report(event.epoch, event.metrics[self.metric], prune=True)

        return receive

    def report(self, epoch: int, value: float, prune: bool) -> None:
        if epoch in self.reported:
            return
        self.trial.report(float(value), epoch)
        self.reported.add(epoch)
        if prune and self.trial.should_prune():
            raise TaskStopped(f"pruned after epoch {epoch + 1} ({self.metric} = {value:.2f})")


def _ignore(event: Any) -> None:
    pass


_STATE_TAGS = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


def _tag_run(ctx: TaskContext, result: TrialResult, number: int) -> None:
    tags = {names.TAG_TRIAL_STATE: _STATE_TAGS[result.state], names.TAG_TRIAL: number}
    if result.value is not None:
        tags[names.TAG_TRIAL_VALUE] = repr(result.value)
    Tracker(ctx.tracking_uri, provenance=ctx.provenance).set_tags(result.run_id, tags)


def tell(study: optuna.Study, trial: optuna.Trial, result: TrialResult) -> None:
    """Record the result in the storage (user attrs first: a finished trial takes none)."""
    if result.run_id:
        trial.set_user_attr(MLFLOW_RUN, result.run_id)
    if result.reason:
        trial.set_user_attr(FAIL_REASON if result.state == TrialState.FAIL else "pruned_reason", result.reason)
    if result.traceback:
        trial.set_user_attr(TRACEBACK, result.traceback)
    if result.state == TrialState.COMPLETE:
        study.tell(trial, result.value)
    else:
        study.tell(trial, state=result.state)
