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

Processes sharing only the tracking store (other workdirs, other machines) coordinate through it
(docs/reliability.md): each task's run is *claimed* (:meth:`harness.tracking.Tracker.claim_run`).
A task whose run FINISHED anywhere is done; one that a live process runs is *busy* and is looked at
again later while the scheduler goes on with other tasks; a task that must train on a parent stage
finished in another workdir first makes the parent's files present here (:mod:`harness._local`).
Ctrl-C (or SIGTERM) closes the interrupted runs KILLED and raises :class:`StudyInterrupted`.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal


from core.errors import UserError
from core.runtime import usable_cores
from core.stages import STAGES
from harness import _local, _nodes
from harness._locks import flock
from harness._rank import Launch
from harness._signals import terminate_as_interrupt
from harness.config import config_to_yaml, flatten
from harness.plan import DONE, Plan, RunRecord, StageRecord, make_plan, stage_dir
from harness.preflight import check_launch, check_plan, check_plan_size, check_workdir
from harness.study import Study, load_study
from harness.tracking import names

if TYPE_CHECKING:  # mlflow is imported where a store is used, so a dry run never pays for it
    from harness.tracking.store import Tracker

__all__ = [
    "Task", "TaskOutcome", "TaskContext", "TaskStopped", "StudyInterrupted", "StudyResult", "Reporter",
    "run_study", "plan_study", "plan_tasks", "execute_task", "study_lock", "SHARED_LABEL", "OpenStudy", "open_study",
    "task_run_key", "stored_metrics",
]

SHARED_LABEL = "shared"  # arm label of a pre-training that several arms share
# STOPPED: a callback raised TaskStopped; BUSY: another live process runs it (schedulers retry it)
Status = Literal["FINISHED", "FAILED", "SKIPPED", "STOPPED", "BUSY"]
BUSY_POLL_S = 3.0  # how often a task another process runs is looked at again
_ERROR_CHARS = 400  # a failure's message in the summary: its first line, cut here
# Failures with a known remedy: exception class name -> what to try (the stage's kind filled in).
_REMEDIES: dict[str, str] = {
    "OutOfMemoryError": "lower {kind}.batch_size, use runtime.precision bf16, or run fewer workers per device",
}


class TaskStopped(Exception):
    """Raised from an event callback to end a task early on purpose (a pruned trial): not a failure."""


class _LeaseLost(Exception):
    """Another process took this task's run over (this process's heartbeat lapsed too long)."""


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a study, after its interrupted runs were closed KILLED.

    Attributes:
        study: the study's name.
        running: what was running (``arm seed N: stages``).
        finished: tasks that had finished, of ``total``.
    """

    def __init__(self, study: str, running: list[str], finished: int, total: int):
        self.study, self.running, self.finished, self.total = study, running, finished, total
        what = "; ".join(running) if running else "no task"
        super().__init__(
            f"study '{study}' interrupted while running {what}; {finished} of {total} tasks had finished"
            " (kept); the interrupted runs are closed KILLED and keep their last epoch checkpoint"
        )


@dataclass(frozen=True)
class Task:
    """One schedulable unit: a stage the arms share (pre-training), or an (arm, seed)'s own stages
    (fine-tune + test eval)."""

    key: str  # the hash of the task's last stage
    kind: Literal["shared", "arm"]
    stages: tuple[StageRecord, ...]  # in order; all run in one tracking run
    depends_on: str | None  # key of the task that must finish first
    label: str  # arm label, or the arms sharing a pre-training
    seed: int
    run: RunRecord | None = None  # for arm tasks
    parent_stage: StageRecord | None = None  # the pre-training an arm task trains on

    def describe(self) -> str:
        return f"{self.label} seed {self.seed} ({' -> '.join(s.kind for s in self.stages)})"


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
    def task_waiting(self, outcome: TaskOutcome) -> None: ...  # BUSY: another process runs it
    def task_finished(self, outcome: TaskOutcome) -> None: ...


# ------------------------------------------------------------------------------------ planning
def plan_study(
    path: Path,
    overrides: tuple[str, ...] = (),
    seeds: tuple[int, ...] | None = None,
    setting: str | None = None,
    devices: tuple[str, ...] = (),
    max_runs: int | None = None,
    plan_device: str | None = None,
) -> tuple[Study, Plan, list[Task]]:
    """Load, validate and plan a study (``seeds`` and ``setting`` replacing the file's; more
    than ``max_runs`` (arm, seed) runs refused first), check what its arms name outside the
    config (backbones, weight files, devices, ``devices``), and group its stages into tasks (no
    side effects)."""
    study = load_study(path, seeds, setting)
    check_plan_size(study, max_runs)
    if len({d.split(":")[0] for d in devices}) > 1:
        raise UserError(f"--devices {','.join(devices)} mixes device types: precision 'auto' would differ between workers")
    # the workers' device decides what precision 'auto' means, not the one the config names
    plan = make_plan(study, overrides, device=devices[0] if devices else plan_device)
    check_plan(plan, devices)
    return study, plan, plan_tasks(plan)


def plan_tasks(plan: Plan) -> list[Task]:
    """A plan's stages grouped into tasks: each shared stage (pre-training), then each run's own stages."""
    tasks: dict[str, Task] = {}
    for stage in plan.stages.values():
        if STAGES[stage.kind].shared:
            arms = list(dict.fromkeys(arm for arm, _ in stage.users))
            label = arms[0] if len(arms) == 1 else SHARED_LABEL  # the harness.arm tag of the run
            tasks[stage.hash] = Task(stage.hash, "shared", (stage,), None, label, stage.users[0][1])
    for run in plan.runs:
        chain = [plan.stages[h] for h in run.chain]
        own = tuple(s for s in chain if not STAGES[s.kind].shared)
        parent = next((s for s in chain if STAGES[s.kind].shared), None)
        key = f"{own[-1].hash}:{run.arm.label}:{run.seed}"
        tasks[key] = Task(key, "arm", own, parent.hash if parent else None, run.arm.label, run.seed, run, parent)
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
    max_runs: int | None = None,
    share_checkpoints: bool = False,
    launch: Launch = Launch(),
) -> StudyResult:
    """Run a study: plan and check, lock, execute tasks (cached ones replayed), track everything.

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
        max_runs: refuse a plan of more (arm, seed) runs than this (None: no limit).
        share_checkpoints: log each pre-training's best checkpoint to the store, so workdirs
            that share only the store fetch it instead of training it again.
        launch: processes per stage (``--nproc-per-node``): more than one runs
            each stage under torch's launcher, one tracking run still.

    Raises:
        UserError: a bad study, plan, workdir or store, before any work.
        StudyInterrupted: Ctrl-C or SIGTERM (the interrupted runs are closed KILLED first).
    """
    reporter = reporter or Reporter()
    with open_study(
        path, workdir, tracking_uri, overrides, seeds, setting, devices, max_runs, retry_failed, launch, share_checkpoints
    ) as opened:
        study, plan, tasks, tracker, parent, context = (
            opened.study, opened.plan, opened.tasks, opened.tracker, opened.parent, opened.context
        )  # fmt: skip
        reporter.start(tasks)
        slots = list(devices) or [None] * max(1, workers)
        running: dict[str, Task] = {}
        done: dict[str, TaskOutcome] = {}
        try:
            if len(slots) == 1:
                with _nodes.lead(launch):  # on several nodes: the others run what this one launches
                    _run_sequential(tasks, context, slots[0], reporter, running, done)
            else:
                _run_parallel(tasks, context, slots, reporter, running, done)
        except KeyboardInterrupt:
            tracker.end_owned_runs("KILLED")  # any this process opened and had not closed yet
            tracker.reap_unfinished(study.name)  # runs of workers that died before closing them
            tracker.end_run(parent, "KILLED")
            interrupted = [task.describe() for task in running.values()]
            raise StudyInterrupted(study.name, interrupted, len(done), len(tasks)) from None
        outcomes = [done[t.key] for t in tasks]
        tracker.end_run(parent, "FAILED" if any(o.status == "FAILED" for o in outcomes) else "FINISHED")
    return StudyResult(study, plan, outcomes, parent)


@dataclass(frozen=True)
class OpenStudy:
    """A planned and checked study, locked in its workdir, with its store and parent run open."""

    study: Study
    plan: Plan
    tasks: list[Task]
    tracker: Tracker
    parent: str  # the study's parent run
    context: TaskContext

    def run_key(self, task: Task) -> Any:
        return task_run_key(task, self.study.name)


@contextlib.contextmanager
def open_study(
    path: Path,
    workdir: Path,
    tracking_uri: str,
    overrides: tuple[str, ...] = (),
    seeds: tuple[int, ...] | None = None,
    setting: str | None = None,
    devices: tuple[str, ...] = (),
    max_runs: int | None = None,
    retry_failed: bool = False,
    launch: Launch = Launch(),
    share_checkpoints: bool = False,
    plan_device: str | None = None,
) -> Iterator[OpenStudy]:
    """What running a study and submitting it begin with: plan and check it (``plan_device``:
    the device its stages will run on, when not this machine's, e.g. a cluster's GPUs), lock it in
    the workdir, open the store, the parent run (reaping runs of dead processes) and the context
    its tasks run in."""
    from harness.tracking import Tracker, init_store, provenance  # mlflow: seconds to import

    study, plan, tasks = plan_study(path, overrides, seeds, setting, devices, max_runs, plan_device)
    check_launch(plan, launch, devices)
    workdir = Path(workdir)
    check_workdir(workdir)
    with study_lock(workdir, study.name):
        init_store(tracking_uri)  # schema created once, before any worker starts; unreachable: one line
        prov = provenance()
        tracker = Tracker(tracking_uri, provenance=prov)
        parent = tracker.study_run(study.name, study.description)
        tracker.reap_unfinished(study.name)  # runs of dead processes; live ones (other workdirs) stay
        _log_study(tracker, parent, study, path, plan)
        context = TaskContext(str(workdir), tracking_uri, study.name, parent, retry_failed, prov, share_checkpoints, launch)
        yield OpenStudy(study, plan, tasks, tracker, parent, context)


def stored_metrics(tracker: Tracker, task: Task, run_id: str) -> dict[str, float]:
    """A finished task's metrics as its run in the store holds them: test metrics, and the
    validation metrics of the selected epoch (as a stage that runs here reports them)."""
    metrics = tracker.final_metrics(run_id)
    training = next((s for s in task.stages if STAGES[s.kind].trains), None)
    if training is not None:
        metrics |= tracker.selected_validation(run_id, training.config.eval.select_metric)[1]
    return metrics


def task_run_key(task: Task, study: str) -> Any:
    """The tracking run of a task: its first stage's kind, its last stage's hash; a shared
    stage's key ignores the arm label (it says how many arms share it, not what it computed)."""
    from harness.tracking import RunKey

    arm = None if task.kind == "shared" else task.label
    return RunKey(study, arm, task.seed, task.stages[0].kind, task.stages[-1].hash)


@dataclass(frozen=True)
class TaskContext:
    """What a task needs besides itself; plain data so it crosses process boundaries."""

    workdir: str
    tracking_uri: str
    study: str
    parent_run_id: str
    retry_failed: bool
    provenance: dict[str, Any]
    share_checkpoints: bool = False  # log pre-trainings' best checkpoints to the store
    launch: Launch = Launch()  # processes per stage (torch's launcher when more than one)


def _log_study(tracker: Tracker, parent: str, study: Study, path: Path, plan: Plan) -> None:
    arms = list(dict.fromkeys(run.arm.label for run in plan.runs))
    tracker.set_tags(parent, {
        names.TAG_ARM_ORDER: json.dumps(arms),
        names.TAG_BASELINE: study.baseline or arms[0],
        names.TAG_SEEDS: json.dumps(list(study.seeds)),  # --seeds may differ from the file's
    })
    tracker.log_artifact_text(parent, names.ARTIFACT_STUDY, Path(path).read_text())


def _run_sequential(
    tasks: list[Task],
    ctx: TaskContext,
    device: str | None,
    reporter: Reporter,
    running: dict[str, Task],
    done: dict[str, TaskOutcome],
) -> None:
    """Tasks in order in this process; a BUSY task is tried again later, after the others."""
    pending = list(tasks)
    wake: dict[str, float] = {}  # BUSY task -> when to look at it again
    while pending:
        ready = [t for t in pending if _ready(t, done) and wake.get(t.key, 0.0) <= time.monotonic()]
        if not ready:  # every pending task is BUSY elsewhere, or waits for one that is
            time.sleep(max(0.1, min(wake.get(t.key, 0.0) for t in pending) - time.monotonic()))
            continue
        task = ready[0]
        blocked = _blocked_by(task, done)
        if blocked is None:
            reporter.task_started(task)
            running[task.key] = task
            outcome = _attempt(task, ctx, device, lambda e, t=task: reporter.event(t, e))
            running.pop(task.key)
        else:
            outcome = blocked
        if outcome.status == "BUSY":
            wake[task.key] = time.monotonic() + BUSY_POLL_S
            reporter.task_waiting(outcome)
            continue
        pending.remove(task)
        done[task.key] = outcome
        reporter.task_finished(outcome)


def _ready(task: Task, done: Mapping[str, TaskOutcome]) -> bool:
    """Its parent task (if any) has an outcome (it may still be BUSY in another process)."""
    return task.depends_on is None or task.depends_on in done


def _run_parallel(
    tasks: list[Task],
    ctx: TaskContext,
    slots: list[str | None],
    reporter: Reporter,
    running: dict[str, Task],
    done: dict[str, TaskOutcome],
) -> None:
    """A scheduler in this process; workers are spawned processes, one per slot."""
    spawn = mp.get_context("spawn")
    events = spawn.Manager().Queue()
    pending = list(tasks)
    wake: dict[str, float] = {}
    free = list(slots)
    futures: dict[Future, tuple[Task, str | None]] = {}
    by_key = {t.key: t for t in tasks}
    # each worker a fixed share of the cores (on 2 cores two 1-thread processes train 1.6x faster
    # than one 2-thread process, README; more threads than cores: up to 10x slower). Fixed, not
    # by how many tasks run at once: the thread count changes floating-point rounding, and two
    # runs of one study on one machine must give the same numbers (measured: a pre-training on 2
    # threads instead of 1 moved the test rSum of the fine-tunings on it by up to 15)
    threads = max(1, usable_cores() // len(slots))
    with ProcessPoolExecutor(max_workers=len(slots), mp_context=spawn) as pool:
        while pending or futures:
            if not futures and not any(_ready(t, done) and wake.get(t.key, 0.0) <= time.monotonic() for t in pending):
                time.sleep(0.2)  # only BUSY tasks left, all looked at a moment ago
            starting: list[Task] = []
            for task in list(pending):
                if not _ready(task, done) or wake.get(task.key, 0.0) > time.monotonic():
                    continue
                blocked = _blocked_by(task, done)
                if blocked is not None:
                    pending.remove(task)
                    done[task.key] = blocked
                    reporter.task_finished(blocked)
                elif len(starting) < len(free):
                    pending.remove(task)
                    starting.append(task)
            for task in starting:
                slot = free.pop(0)
                reporter.task_started(task)
                running[task.key] = task
                futures[pool.submit(_worker, task, ctx, slot, events, threads)] = (task, slot)
            finished, _ = wait(list(futures), timeout=0.2, return_when=FIRST_COMPLETED)
            while not events.empty():
                key, event = events.get()
                reporter.event(by_key[key], event)
            for future in finished:
                task, slot = futures.pop(future)
                free.append(slot)
                running.pop(task.key)
                outcome = future.result()
                if outcome.status == "BUSY":
                    pending.append(task)
                    wake[task.key] = time.monotonic() + BUSY_POLL_S
                    reporter.task_waiting(outcome)
                    continue
                done[task.key] = outcome
                reporter.task_finished(outcome)


def _worker(task: Task, ctx: TaskContext, device: str | None, events: Any, threads: int) -> TaskOutcome:
    import torch

    torch.set_num_threads(threads)
    with terminate_as_interrupt():  # SLURM's SIGTERM reaches the workers too: close their runs
        return _attempt(task, ctx, device, lambda event: events.put((task.key, event)))


def _blocked_by(task: Task, outcomes: Mapping[str, TaskOutcome]) -> TaskOutcome | None:
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
    """Run (or replay from cache) one task inside its own tracking run; never raises. A task that
    another live process runs (any workdir sharing the store) is waited for, and then usually
    found finished.

    Args:
        task: the task.
        ctx: the study's context.
        device: the worker's device (None: the config's).
        on_event: receives the trainer's events; raising :class:`TaskStopped` from it ends the task
            with status STOPPED (its run KILLED, its stage resumable, not done).
        tags: extra tags for a newly opened run (a sweep's trial number).
    """
    while True:
        outcome = _attempt(task, ctx, device, on_event, tags)
        if outcome.status != "BUSY":
            return outcome
        time.sleep(BUSY_POLL_S)


def _attempt(
    task: Task, ctx: TaskContext, device: str | None, on_event: Callable[[Any], None], tags: Mapping[str, Any] | None = None
) -> TaskOutcome:
    """One try at a task: its outcome, BUSY when another live process owns its run."""
    with _local.work_lock(Path(ctx.workdir), "tasks", task.key):
        return _execute_task(task, ctx, device, on_event, tags)


def _execute_task(
    task: Task, ctx: TaskContext, device: str | None, on_event: Callable[[Any], None], tags: Mapping[str, Any] | None
) -> TaskOutcome:
    from harness.tracking import RunKey, Tracker

    tracker = Tracker(ctx.tracking_uri, provenance=ctx.provenance)
    last = task.stages[-1]
    started = time.perf_counter()
    pretrain_run = None
    if task.depends_on is not None:
        pretrain_run = tracker.find_run(RunKey(ctx.study, None, task.seed, task.parent_stage.kind, task.depends_on))
    key = task_run_key(task, ctx.study)
    claim = tracker.claim_run(
        key, ctx.parent_run_id, flatten(last.config), {**({names.TAG_DEVICE: device} if device else {}), **(tags or {})},
        label=task.label, pretrain_run_id=pretrain_run, retry_failed=ctx.retry_failed,
    )  # fmt: skip
    if claim.kind == "finished":  # done, in this workdir or another: its outputs are in the store
        return TaskOutcome(task, "FINISHED", claim.run_id, stored_metrics(tracker, task, claim.run_id), cached=True)
    if claim.kind == "failed":
        return TaskOutcome(task, "FAILED", claim.run_id, error="failed in an earlier attempt (use --retry-failed)")
    if claim.kind == "busy":
        owner = claim.owner.describe() if claim.owner is not None else "another process"
        return TaskOutcome(task, "BUSY", claim.run_id, error=f"{owner} is running it")
    run_id = claim.run_id
    where: list[StageRecord] = []  # the stage being worked on, for messages
    try:
        tracker.log_artifact_text(run_id, names.ARTIFACT_CONFIG, config_to_yaml(last.config))
        metrics, cached = _run_stages(task, ctx, device, tracker, run_id, on_event, where)
    except TaskStopped as stop:  # on purpose: the stage stays resumable, the run is not a failure
        tracker.end_run(run_id, "KILLED")
        return TaskOutcome(task, "STOPPED", run_id, seconds=time.perf_counter() - started, error=str(stop))
    except _LeaseLost:  # the run is another process's now: leave it alone
        error = "another process took over this run (this process's heartbeat lapsed); its result is that process's"
        return TaskOutcome(task, "FAILED", None, seconds=time.perf_counter() - started, error=error)
    except KeyboardInterrupt:
        tracker.end_run(run_id, "KILLED")  # resumable: the next `harness run` continues it
        raise
    except Exception as exc:  # failure isolation: record it, let the other tasks go on
        trace = traceback.format_exc()
        tracker.log_artifact_text(run_id, names.ARTIFACT_TRACEBACK, trace)
        tracker.end_run(run_id, "FAILED")
        error = _describe_failure(exc, where[-1] if where else last)
        return TaskOutcome(task, "FAILED", run_id, seconds=time.perf_counter() - started, error=error, traceback=trace)
    tracker.end_run(run_id, "FINISHED")
    return TaskOutcome(task, "FINISHED", run_id, metrics, time.perf_counter() - started, cached)


def _describe_failure(exc: BaseException, stage: StageRecord) -> str:
    """One line for the summary: the stage, the cause, and a remedy when one is known."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    error_type = getattr(exc, "error_type", type(exc).__name__)  # a rank's, for a launched stage
    cause = first if isinstance(exc, UserError) else f"{type(exc).__name__}: {first}"
    remedy = _REMEDIES.get(error_type)
    if remedy is not None:
        cause = f"out of memory ({first[:160]}); {remedy.format(kind=stage.kind)}"
    line = f"{stage.kind} {stage.hash}: {cause}"
    return line if len(line) <= _ERROR_CHARS else line[: _ERROR_CHARS - 3] + "..."


def _run_stages(
    task: Task,
    ctx: TaskContext,
    device: str | None,
    tracker: Tracker,
    run_id: str,
    on_event: Callable,
    where: list[StageRecord],
) -> tuple[dict[str, float], bool]:
    from harness._stages import run_stage  # heavy imports (torch, models) only where stages run

    workdir = Path(ctx.workdir)

    def live(event: Any) -> None:
        if tracker.lost(run_id):
            raise _LeaseLost()
        if event.kind == "epoch":  # per-epoch metrics show in the UI while the stage runs
            tracker.log_metrics(run_id, event.metrics, step=event.epoch)
        on_event(event)

    if task.parent_stage is not None:  # its files may be in another workdir only
        where.append(task.parent_stage)
        _parent_here(task.parent_stage, ctx, tracker, device, on_event)
    metrics: dict[str, float] = {}
    all_cached = True
    for stage in task.stages:
        where.append(stage)
        out = stage_dir(workdir, stage.hash)
        parent_out = stage_dir(workdir, stage.parent) if stage.parent else None
        with _local.work_lock(workdir, "stages", stage.hash):  # another task may share this stage
            cached = (out / DONE).is_file()
            if cached:
                record = _local.read_record(workdir, stage.hash)
            else:
                record = _checked(lambda: run_stage(stage, out, parent_out, workdir, device, live, ctx.launch), workdir, task)
                _local.finish_stage(workdir, stage.hash, record)
        all_cached &= cached
        # Replay what the run lacks: a cached stage, or epochs a killed attempt never logged.
        logged = tracker.logged_steps(run_id, names.TRAIN_LOSS)
        for epoch, values in enumerate(record.history):
            if epoch not in logged:
                tracker.log_metrics(run_id, values, step=epoch)
        if record.final:
            tracker.log_metrics(run_id, record.final, step=0)
            metrics.update(record.final)
        metrics.update({names.val_metric(k): v for k, v in record.best.items()})
        if (out / names.ARTIFACT_RANKS).is_file():
            tracker.log_artifact_file(run_id, out / names.ARTIFACT_RANKS)
        if ctx.share_checkpoints and STAGES[stage.kind].shared:
            tracker.log_stage_checkpoint(run_id, [out / name for name in _local.BEST_FILES])
    tracker.add_holder(run_id, workdir)
    return metrics, all_cached


def _parent_here(stage: StageRecord, ctx: TaskContext, tracker: Tracker, device: str | None, on_event: Callable) -> None:
    """The parent stage's files in this workdir: already here, fetched from the store, or run here."""
    from harness._stages import run_stage
    from harness.tracking import RunKey

    workdir = Path(ctx.workdir)
    finished = tracker.find_run(RunKey(ctx.study, None, None, stage.kind, stage.hash))

    def fetch(out: Path) -> bool:
        return finished is not None and tracker.fetch_stage_checkpoint(finished, out) is not None

    def run(out: Path) -> _local.StageOutputs:
        return run_stage(stage, out, None, workdir, device, on_event, ctx.launch)

    how = _local.make_present(stage, workdir, fetch, run)
    if how != "here" and finished is not None:
        tracker.add_holder(finished, workdir)
        if how == "ran" and ctx.share_checkpoints:  # trained again here: share it from now on
            tracker.log_stage_checkpoint(finished, [stage_dir(workdir, stage.hash) / name for name in _local.BEST_FILES])


def _checked(run: Callable[[], dict[str, Any]], workdir: Path, task: Task) -> dict[str, Any]:
    """Run a stage; a damaged checkpoint of one of this workdir's stages resets that stage (its
    DONE removed, the file set aside) and fails the task with one line naming both."""
    from core.checkpoint import DamagedCheckpoint  # torch: only where stages run

    try:
        return run()
    except DamagedCheckpoint as err:
        digest = _local.stage_of(workdir, err.path)
        if digest is None:
            raise
        known = {s.hash: s.kind for s in (*task.stages, *((task.parent_stage,) if task.parent_stage else ()))}
        _local.reset_stage(workdir, digest, err.path)
        raise UserError(
            f"{err} (stage {known.get(digest, 'stage')} {digest}); that stage was reset and trains again on the"
            " next run: use --retry-failed"
        ) from err
