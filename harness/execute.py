"""Execution of a plan: stages in dependency order, cached by hash, tracked in MLflow.

The unit of work is a *task*: one shared pre-training stage, or one (arm, seed)'s fine-tuning
followed by its test evaluation. A task whose stage outputs exist (``DONE`` marker) is not trained
again; its recorded history is replayed into this study's tracking run, so every study in the store
is complete on its own even when its stages were cached by another study. A task that raises is
marked FAILED with its traceback and the others go on; tasks that depend on it fail without running.

Tasks run in this process by default, or in worker processes (``workers`` > 1, one per device
with ``devices``); the scheduler in this process hands out tasks whose parent stage is done.
Processes that share a workdir without sharing a scheduler (``harness sweep`` workers, two studies
at once) take a task's lock and each stage's lock first: a second process waits, then finds the
work cached instead of training it again into the same folder.

A callback may stop a task on purpose by raising :class:`TaskStopped` (a pruned sweep trial): the
stage keeps its epoch checkpoint but is not marked done, and its run is closed KILLED, not FAILED.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing as mp
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


from core.errors import UserError
from harness._locks import flock
from harness.config import config_to_yaml, flatten
from harness.plan import DONE, Plan, RunRecord, StageRecord, make_plan, mark_done, stage_dir
from harness.study import Study, load_study
from harness.tracking import Tracker, init_store, names, provenance

__all__ = [
    "Task", "TaskOutcome", "TaskContext", "TaskStopped", "StudyResult", "Reporter",
    "run_study", "plan_study", "plan_tasks", "execute_task", "study_lock", "SHARED_LABEL",
]

SHARED_LABEL = "shared"  # arm label of a pre-training that several arms share
Status = Literal["FINISHED", "FAILED", "SKIPPED", "STOPPED"]  # STOPPED: a callback raised TaskStopped


class TaskStopped(Exception):
    """Raised from an event callback to end a task early on purpose (a pruned trial): not a failure."""


@dataclass(frozen=True)
class Task:
    """One schedulable unit: a shared pre-training, or an (arm, seed)'s fine-tune + test eval."""

    key: str  # the hash of the task's last stage
    kind: Literal["pretrain", "arm"]
    stages: tuple[StageRecord, ...]  # in order; all run in one tracking run
    depends_on: str | None  # key of the task that must finish first
    label: str  # arm label, or the arms sharing a pre-training
    seed: int
    run: RunRecord | None = None  # for arm tasks


@dataclass
class TaskOutcome:
    task: Task
    status: Status
    run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # val best + test
    seconds: float = 0.0
    cached: bool = False
    error: str | None = None
    traceback: str | None = None  # of a FAILED task


@dataclass
class StudyResult:
    study: Study
    plan: Plan
    outcomes: list[TaskOutcome]
    parent_run_id: str

    @property
    def failed(self) -> list[TaskOutcome]:
        return [o for o in self.outcomes if o.status == "FAILED"]


class Reporter:
    """Receives progress; the CLI subclasses it with rich bars. The default prints nothing."""

    def start(self, tasks: list[Task]) -> None: ...
    def task_started(self, task: Task) -> None: ...
    def event(self, task: Task, event: Any) -> None: ...
    def task_finished(self, outcome: TaskOutcome) -> None: ...


# ------------------------------------------------------------------------------------ planning
def plan_study(
    path: Path, overrides: tuple[str, ...] = (), seeds: tuple[int, ...] | None = None, setting: str | None = None
) -> tuple[Study, Plan, list[Task]]:
    """Load, validate and plan a study (``seeds`` and ``setting`` replacing the file's), and
    group its stages into tasks (no side effects)."""
    study = load_study(path, seeds, setting)
    plan = make_plan(study, overrides)
    return study, plan, plan_tasks(plan)


def plan_tasks(plan: Plan) -> list[Task]:
    """A plan's stages grouped into tasks: each pre-training, then each run's own stages."""
    tasks: dict[str, Task] = {}
    for stage in plan.stages.values():
        if stage.kind == "pretrain":
            arms = list(dict.fromkeys(arm for arm, _ in stage.users))
            label = arms[0] if len(arms) == 1 else SHARED_LABEL  # the harness.arm tag of the run
            tasks[stage.hash] = Task(stage.hash, "pretrain", (stage,), None, label, stage.users[0][1])
    for run in plan.runs:
        chain = [plan.stages[h] for h in run.chain]
        own = tuple(s for s in chain if s.kind != "pretrain")
        parent = next((s.hash for s in chain if s.kind == "pretrain"), None)
        key = f"{own[-1].hash}:{run.arm.label}:{run.seed}"
        tasks[key] = Task(key, "arm", own, parent, run.arm.label, run.seed, run)
    return list(tasks.values())


# ------------------------------------------------------------------------------------- locking
@contextlib.contextmanager
def study_lock(workdir: Path, study_name: str) -> Iterator[None]:
    """Refuse a second concurrent ``harness run`` of one study (the lock dies with its process)."""
    path = Path(workdir) / "locks" / f"{study_name}.lock"
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(flock(path, blocking=False))
        except BlockingIOError:
            holder = path.read_text().strip() or "unknown"
            raise UserError(
                f"study '{study_name}' is already being run by another harness process (pid {holder});"
                f" wait for it to finish, or remove {path} if that process is gone"
            ) from None
        yield


def _work_lock(workdir: Path, kind: str, key: str) -> contextlib.AbstractContextManager[None]:
    """Wait for any other process working on the same task or stage of this workdir."""
    name = hashlib.sha256(key.encode()).hexdigest()[:16]  # task keys hold arm labels: any characters
    return flock(Path(workdir) / "locks" / kind / f"{name}.lock")


# ------------------------------------------------------------------------------------ running
def run_study(
    path: Path,
    *,
    workdir: Path,
    tracking_uri: str,
    overrides: tuple[str, ...] = (),
    workers: int = 1,
    devices: tuple[str, ...] = (),
    retry_failed: bool = False,
    reporter: Reporter | None = None,
    seeds: tuple[int, ...] | None = None,
    setting: str | None = None,
) -> StudyResult:
    """Run a study: plan, lock, execute tasks (cached ones replayed), track everything.

    Args:
        path: the study YAML.
        workdir: caches, stage outputs, locks.
        tracking_uri: the MLflow store.
        overrides: ``--set KEY=VALUE`` items applied to every arm.
        workers: parallel worker processes (1 = in this process).
        devices: one worker per device (e.g. ``("cuda:0", "cuda:1")``); overrides ``workers``.
        retry_failed: re-run the (arm, seed) runs whose last attempt FAILED; without it they are
            reported as failed again without running.
        reporter: progress sink.
        seeds: replace the study file's seeds (``--seeds``).
        setting: replace the study file's base setting (``--setting``).
    """
    reporter = reporter or Reporter()
    study, plan, tasks = plan_study(path, overrides, seeds, setting)
    workdir = Path(workdir)
    with study_lock(workdir, study.name):
        init_store(tracking_uri)  # schema created once, before any worker starts
        prov = provenance()
        tracker = Tracker(tracking_uri, provenance=prov)
        parent = tracker.study_run(study.name, study.description)
        tracker.reap_unfinished(study.name)  # we hold the lock: RUNNING runs belong to dead processes
        _log_study(tracker, parent, study, path, plan)
        context = TaskContext(str(workdir), tracking_uri, study.name, parent, retry_failed, prov)
        reporter.start(tasks)
        slots = list(devices) or [None] * max(1, workers)
        if len(slots) == 1:
            outcomes = _run_sequential(tasks, context, slots[0], reporter)
        else:
            outcomes = _run_parallel(tasks, context, slots, reporter)
        tracker.end_run(parent, "FAILED" if any(o.status == "FAILED" for o in outcomes) else "FINISHED")
    return StudyResult(study, plan, outcomes, parent)


@dataclass(frozen=True)
class TaskContext:
    """What a task needs besides itself; plain data so it crosses process boundaries."""

    workdir: str
    tracking_uri: str
    study: str
    parent_run_id: str
    retry_failed: bool
    provenance: dict[str, Any]


def _log_study(tracker: Tracker, parent: str, study: Study, path: Path, plan: Plan) -> None:
    arms = list(dict.fromkeys(run.arm.label for run in plan.runs))
    tracker.set_tags(parent, {
        names.TAG_ARM_ORDER: json.dumps(arms),
        names.TAG_BASELINE: study.baseline or arms[0],
        names.TAG_SEEDS: json.dumps(list(study.seeds)),  # --seeds may differ from the file's
    })
    tracker.log_artifact_text(parent, names.ARTIFACT_STUDY, Path(path).read_text())


def _run_sequential(tasks: list[Task], ctx: TaskContext, device: str | None, reporter: Reporter) -> list[TaskOutcome]:
    outcomes: dict[str, TaskOutcome] = {}
    for task in tasks:
        blocked = _blocked_by(task, outcomes)
        if blocked is not None:
            outcomes[task.key] = blocked
        else:
            reporter.task_started(task)
            outcomes[task.key] = execute_task(task, ctx, device, lambda e, t=task: reporter.event(t, e))
        reporter.task_finished(outcomes[task.key])
    return [outcomes[t.key] for t in tasks]


def _run_parallel(tasks: list[Task], ctx: TaskContext, slots: list[str | None], reporter: Reporter) -> list[TaskOutcome]:
    """A scheduler in this process; workers are spawned processes, one per slot."""
    spawn = mp.get_context("spawn")
    events = spawn.Manager().Queue()
    outcomes: dict[str, TaskOutcome] = {}
    pending = list(tasks)
    free = list(slots)
    running: dict[Future, tuple[Task, str | None]] = {}
    by_key = {t.key: t for t in tasks}
    with ProcessPoolExecutor(max_workers=len(slots), mp_context=spawn) as pool:
        while pending or running:
            for task in list(pending):
                blocked = _blocked_by(task, outcomes)
                if blocked is not None:
                    pending.remove(task)
                    outcomes[task.key] = blocked
                    reporter.task_finished(blocked)
                elif free and (task.depends_on is None or task.depends_on in outcomes):
                    pending.remove(task)
                    slot = free.pop(0)
                    reporter.task_started(task)
                    running[pool.submit(_worker, task, ctx, slot, events)] = (task, slot)
            done, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
            while not events.empty():
                key, event = events.get()
                reporter.event(by_key[key], event)
            for future in done:
                task, slot = running.pop(future)
                free.append(slot)
                outcomes[task.key] = future.result()
                reporter.task_finished(outcomes[task.key])
    return [outcomes[t.key] for t in tasks]


def _worker(task: Task, ctx: TaskContext, device: str | None, events: Any) -> TaskOutcome:
    return execute_task(task, ctx, device, lambda event: events.put((task.key, event)))


def _blocked_by(task: Task, outcomes: dict[str, TaskOutcome]) -> TaskOutcome | None:
    parent = outcomes.get(task.depends_on) if task.depends_on else None
    if parent is not None and parent.status == "FAILED":
        return TaskOutcome(task, "FAILED", error=f"its pre-training failed ({parent.error})")
    return None


# ------------------------------------------------------------------------------ one task
def execute_task(
    task: Task,
    ctx: TaskContext,
    device: str | None,
    on_event: Callable[[Any], None],
    tags: Mapping[str, Any] | None = None,
) -> TaskOutcome:
    """Run (or replay from cache) one task inside its own tracking run; never raises.

    Args:
        task: the task.
        ctx: the study's context.
        device: the worker's device (None: the config's).
        on_event: receives the trainer's events; raising :class:`TaskStopped` from it ends the task
            with status STOPPED (its run KILLED, its stage resumable, not done).
        tags: extra tags for a newly opened run (a sweep's trial number).
    """
    with _work_lock(Path(ctx.workdir), "tasks", task.key):
        return _execute_task(task, ctx, device, on_event, tags)


def _execute_task(
    task: Task, ctx: TaskContext, device: str | None, on_event: Callable[[Any], None], tags: Mapping[str, Any] | None
) -> TaskOutcome:
    tracker = Tracker(ctx.tracking_uri, provenance=ctx.provenance)
    workdir = Path(ctx.workdir)
    last = task.stages[-1]
    stage_tag = "pretrain" if task.kind == "pretrain" else ("finetune" if any(s.kind == "finetune" for s in task.stages) else "eval")
    started = time.perf_counter()
    finished = tracker.find_run(ctx.study, task.label, task.seed, stage_tag, last.hash, status="FINISHED")
    if finished is not None:
        return TaskOutcome(task, "FINISHED", finished, tracker.final_metrics(finished), cached=True)
    failed = tracker.find_run(ctx.study, task.label, task.seed, stage_tag, last.hash, status="FAILED")
    if failed is not None and not ctx.retry_failed:
        return TaskOutcome(task, "FAILED", failed, error="failed in an earlier attempt (use --retry-failed)")
    pretrain_run = None
    if task.depends_on is not None:
        pretrain_run = tracker.find_run(ctx.study, None, task.seed, "pretrain", task.depends_on, status="FINISHED")
    run_id = tracker.start_run(
        ctx.study, task.label, task.seed, stage_tag, last.hash, ctx.parent_run_id, flatten(last.config),
        {**({"harness.device": device} if device else {}), **(tags or {})}, pretrain_run_id=pretrain_run,
    )
    tracker.log_artifact_text(run_id, names.ARTIFACT_CONFIG, config_to_yaml(last.config))
    try:
        metrics, cached = _run_stages(task, workdir, device, tracker, run_id, on_event)
    except TaskStopped as stop:  # on purpose: the stage stays resumable, the run is not a failure
        tracker.end_run(run_id, "KILLED")
        return TaskOutcome(task, "STOPPED", run_id, seconds=time.perf_counter() - started, error=str(stop))
    except Exception as exc:  # failure isolation: record it, let the other tasks go on
        trace = traceback.format_exc()
        tracker.log_artifact_text(run_id, names.ARTIFACT_TRACEBACK, trace)
        tracker.end_run(run_id, "FAILED")
        error = f"{type(exc).__name__}: {exc}"
        return TaskOutcome(task, "FAILED", run_id, seconds=time.perf_counter() - started, error=error, traceback=trace)
    tracker.end_run(run_id, "FINISHED")
    return TaskOutcome(task, "FINISHED", run_id, metrics, time.perf_counter() - started, cached)


def _run_stages(
    task: Task, workdir: Path, device: str | None, tracker: Tracker, run_id: str, on_event: Callable
) -> tuple[dict[str, float], bool]:
    from harness._stages import run_stage  # heavy imports (torch, models) only where stages run

    def live(event: Any) -> None:
        if event.kind == "epoch":  # per-epoch metrics show in the UI while the stage runs
            tracker.log_metrics(run_id, event.metrics, step=event.epoch)
        on_event(event)

    metrics: dict[str, float] = {}
    all_cached = True
    for stage in task.stages:
        out = stage_dir(workdir, stage.hash)
        parent_out = stage_dir(workdir, stage.parent) if stage.parent else None
        with _work_lock(workdir, "stages", stage.hash):  # another task may share this stage
            cached = (out / DONE).is_file()
            if cached:
                record = json.loads((out / "record.json").read_text())
            else:
                record = run_stage(stage, out, parent_out, workdir, device, live)
                (out / "record.json").write_text(json.dumps(record))
                mark_done(workdir, stage.hash)
        all_cached &= cached
        # Replay what the run lacks: a cached stage, or epochs a killed attempt never logged.
        logged = tracker.logged_steps(run_id, names.TRAIN_LOSS)
        for epoch, values in enumerate(record.get("history", [])):
            if epoch not in logged:
                tracker.log_metrics(run_id, values, step=epoch)
        if record.get("final"):
            tracker.log_metrics(run_id, record["final"], step=0)
            metrics.update(record["final"])
        if record.get("best"):
            metrics.update({names.val_metric(k): v for k, v in record["best"].items()})
        if (out / names.ARTIFACT_RANKS).is_file():
            tracker.log_artifact_file(run_id, out / names.ARTIFACT_RANKS)
    return metrics, all_cached
