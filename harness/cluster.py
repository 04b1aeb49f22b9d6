"""A study's stages as cluster jobs, through submitit: SLURM (``harness run --executor slurm``)
or submitit's local executor (``--executor submitit-local``: the same jobs on this machine, for
testing).

Each task (a shared pre-training, or one (arm, seed)'s fine-tune + test evaluation) becomes one
job running :func:`harness.execute.execute_task`, so a job claims its tracking run, trains,
resumes and records exactly as a local run does. On SLURM every pre-training is a job and the
(arm, seed) tasks that train on it are one job array that starts after it succeeds
(``--dependency=afterok``); the command returns once they are queued. Running it again submits
only what is neither done in the store nor queued or running (the job ids are kept in
``<workdir>/jobs/<study>/jobs.json``), so it also collects: the summary then shows what finished.
``harness status STUDY`` shows each task's state. The local executor has no dependencies: it
waits for the pre-trainings before it submits the tasks that depend on them, then for those.

Resources come from a setting's ``cluster:`` section and the command's options (which win).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from core.errors import UserError
from core.files import atomic_write_text
from core.stages import PRETRAIN
from harness._rank import Launch
from harness.config import cluster_section
from harness.execute import OpenStudy, Task, TaskContext, TaskOutcome, execute_task, open_study, stored_metrics
from harness.tracking import names

__all__ = [
    "Executor", "ClusterOptions", "Submission", "TaskJob", "cluster_options", "submit_study", "job_states", "study_status",
    "JOBS_FILE",
]

Executor = Literal["local", "slurm", "submitit-local"]
JOBS_FILE = "jobs.json"  # task key -> its job's id, in <workdir>/jobs/<study>/
# SLURM states of a job that will still run (sacct, as submitit reports them)
WAITING = frozenset({"PENDING", "REQUEUED", "CONFIGURING", "RESIZING", "SUSPENDED"})
RUNNING = frozenset({"RUNNING", "COMPLETING"})
log = logging.getLogger("harness")


class ClusterOptions(BaseModel):
    """The ``cluster:`` section of a setting (also ``harness run``'s options of the same names)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: str | None = None
    time: int = Field(24 * 60, ge=1)  # minutes a job may run (sbatch --time)
    gpus_per_node: int | None = Field(None, ge=0)  # default: --nproc-per-node on a GPU setting, else 0
    cpus_per_task: int | None = Field(None, ge=1)
    mem_gb: int | None = Field(None, ge=1)
    account: str | None = None
    qos: str | None = None
    sbatch: tuple[str, ...] = ()  # more sbatch options, each "--key=value" (e.g. "--constraint=a100")
    setup: tuple[str, ...] = ()  # shell lines the job script runs first (e.g. "module load cuda/12")


def cluster_options(setting: str | None, given: Mapping[str, Any]) -> ClusterOptions:
    """A setting's ``cluster:`` section with the options given on the command line over it.

    Args:
        setting: the study's setting (name or path; None: the default).
        given: option name -> value; None values are not given.
    """
    values = {**cluster_section(setting), **{k: v for k, v in given.items() if v is not None and v != ()}}
    try:
        return ClusterOptions.model_validate(values)
    except ValidationError as err:
        problems = "; ".join(f"cluster.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise UserError(f"setting {setting or 'cpu-small'}: {problems}") from None


@dataclass(frozen=True)
class Submission:
    """What ``harness run --executor ...`` did with each task: ``done`` (finished in the store),
    ``failed`` (failed before: ``--retry-failed``), ``blocked`` (its pre-training failed),
    ``queued`` (a job already waits or runs: ``job_id``), ``submitted`` (``job_id``), or ``ran``
    with the local executor, with the task's outcome once its job ended."""

    task: Task
    state: str
    job_id: str | None = None
    outcome: TaskOutcome | None = None


class TaskJob:
    """What a job runs: the task, exactly as the local executor runs it; returns its status.

    A task that fails, or that another live process runs, fails the job, so that SLURM does not
    start the tasks that depend on it (``--kill-on-invalid-dep=yes`` cancels them; the next
    ``harness run`` submits them again once their parent is done). Near its time limit (submitit's
    USR2) the job closes its runs KILLED and is requeued by :meth:`checkpoint`: the requeued job
    resumes them from their last epoch checkpoint at once.
    """

    def __call__(self, task: Task, ctx: TaskContext) -> str:
        import submitit

        from harness import _nodes
        from harness.tracking import provenance

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        if ctx.launch.nnodes > 1:  # a task per node: the first leads, the others run what it launches
            ctx = dataclasses.replace(ctx, launch=_nodes.slurm_node(ctx.launch, submitit.JobEnvironment()))
            if ctx.launch.node_rank > 0:
                followed = _nodes.follow(ctx.launch, log.info)
                return f"followed node 0 ({followed.end}): {len(followed.stages)} stages, {len(followed.failed)} failed"
        # the node's machine, and the code as the job finds it (not the login node's at submission)
        ctx = dataclasses.replace(ctx, provenance=provenance())
        with _nodes.lead(ctx.launch):
            outcome = execute_task(task, ctx, None, lambda event: log.info("%s %s", task.describe(), event))
        if outcome.status != "FINISHED":
            raise RuntimeError(f"{task.describe()}: {outcome.status} ({outcome.error})")
        return outcome.status

    def checkpoint(self, task: Task, ctx: TaskContext) -> Any:
        import submitit

        from harness.tracking import Tracker

        Tracker(ctx.tracking_uri).end_owned_runs("KILLED")
        return submitit.helpers.DelayedSubmission(TaskJob(), task, ctx)


def submit_study(
    path: Path,
    *,
    executor: Executor,
    cluster: ClusterOptions,
    workdir: Path,
    tracking_uri: str,
    overrides: tuple[str, ...] = (),
    seeds: tuple[int, ...] | None = None,
    setting: str | None = None,
    retry_failed: bool = False,
    launch: Launch = Launch(),
    max_runs: int | None = None,
    share_checkpoints: bool = False,
) -> list[Submission]:
    """Submit the study's tasks that are not done yet as jobs (see the module's docstring).

    Raises:
        UserError: a bad study, plan, workdir, store or cluster option, before anything is submitted.
    """
    import submitit

    if executor == "slurm" and not all(shutil.which(tool) for tool in ("sbatch", "srun")):
        raise UserError("--executor slurm submits with SLURM's sbatch and srun, and this machine has neither on its PATH (run it on the cluster's login node)")
    # the stages run on the cluster's devices, not this machine's (a login node has no GPU): GPUs
    # unless the cluster options ask for none, so that precision 'auto' means bf16 there
    gpus = cluster.gpus_per_node if cluster.gpus_per_node is not None else (launch.nproc_per_node if executor == "slurm" else 0)
    if gpus and gpus < launch.nproc_per_node:
        raise UserError(f"--gpus-per-node {gpus} is fewer than --nproc-per-node {launch.nproc_per_node} (one GPU per process)")
    device = "cuda" if gpus else "cpu"
    opened_study = open_study(
        path, workdir, tracking_uri, overrides, seeds, setting, (), max_runs, retry_failed, launch, share_checkpoints, device
    )
    with opened_study as opened:
        tasks, ctx, tracker = opened.tasks, opened.context, opened.tracker
        folder = Path(workdir) / "jobs" / opened.study.name
        jobs = _read_jobs(folder)
        states = job_states(folder, {k: j for k, j in jobs.items() if j.get("executor") == "slurm"})
        pool = submitit.AutoExecutor(folder=folder, cluster="slurm" if executor == "slurm" else "local")
        pool.update_parameters(**_parameters(cluster, gpus, opened.study.name, launch.nnodes))
        results = {task.key: item for task in tasks if (item := _known(task, opened, jobs, states, retry_failed))}
        handles: dict[str, Any] = {}  # task key -> the submitit job submitted now

        def submit(group: list[Task], dependency: str | None) -> None:
            if not group:
                return
            extra = dict(_sbatch_options(cluster))
            if executor == "slurm" and dependency is not None:
                extra |= {"dependency": f"afterok:{dependency}", "kill_on_invalid_dep": "yes"}
            pool.update_parameters(slurm_additional_parameters=extra)
            with pool.batch():  # one job array
                submitted = [(task, pool.submit(TaskJob(), task, ctx)) for task in group]
            for task, job in submitted:
                handles[task.key] = job
                results[task.key] = Submission(task, "submitted", job.job_id)
                jobs[task.key] = {**_job_record(task, job.job_id), "executor": executor}
            _write_jobs(folder, jobs)  # after every batch: a later sbatch that fails loses no job id

        shared = [t for t in tasks if t.kind == "shared" and t.key not in results]
        submit(shared, None)
        if executor != "slurm":  # no dependencies locally: the pre-trainings end first
            for task in shared:
                results[task.key] = _ran(task, handles[task.key], opened)
        by_parent: dict[str | None, list[Task]] = {}
        for task in tasks:
            if task.kind == "arm" and task.key not in results:
                by_parent.setdefault(task.depends_on, []).append(task)
        for parent, group in by_parent.items():
            before = results.get(parent)
            parent_failed = before is not None and (
                before.state in ("failed", "blocked") or (before.outcome is not None and before.outcome.status != "FINISHED")
            )
            if parent_failed:
                results.update((task.key, Submission(task, "blocked")) for task in group)  # nothing to train on
                continue
            waits = before is not None and before.state in ("queued", "submitted")
            submit(group, before.job_id if waits else None)
        if executor != "slurm":
            for task in tasks:
                if results[task.key].state == "submitted":
                    results[task.key] = _ran(task, handles[task.key], opened)
        ordered = [results[task.key] for task in tasks]
        if any(item.state in ("submitted", "queued") for item in ordered):
            tracker.mark_scheduled(opened.parent)
        else:
            failed = any(item.state in ("failed", "blocked") or (item.outcome and item.outcome.status != "FINISHED") for item in ordered)
            tracker.end_run(opened.parent, "FAILED" if failed else "FINISHED")
    return ordered


def _known(task: Task, opened: OpenStudy, jobs: Mapping, states: Mapping[str, str], retry_failed: bool) -> Submission | None:
    """What a task already is: done in the store, queued or running as a job, failed before
    (kept, with its traceback, unless ``--retry-failed``); None: to submit."""
    key = opened.run_key(task)
    if opened.tracker.find_run(key) is not None:
        return Submission(task, "done")
    if states.get(task.key) in WAITING | RUNNING:
        return Submission(task, "queued", jobs[task.key]["job_id"])
    if not retry_failed and opened.tracker.find_run(key, status="FAILED") is not None:
        return Submission(task, "failed")
    return None


def _ran(task: Task, job: Any, opened: OpenStudy) -> Submission:
    """A local job, once it ended: its task's outcome as the store records it (read only: a job
    that left no finished run is not trained here)."""
    job_id = job.job_id
    try:
        job.result()
    except Exception as err:  # noqa: BLE001 - the job's exception: its run holds the traceback
        log.warning("job %s (%s) failed: %s", job_id, task.describe(), (str(err).strip().splitlines() or [repr(err)])[-1])
    run_id = opened.tracker.find_run(opened.run_key(task))
    if run_id is None:
        return Submission(task, "ran", job_id, TaskOutcome(task, "FAILED", error=f"job {job_id} left no finished run"))
    return Submission(task, "ran", job_id, TaskOutcome(task, "FINISHED", run_id, stored_metrics(opened.tracker, task, run_id)))


def job_states(folder: Path, jobs: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """The SLURM state of each recorded job (sacct through submitit); ``UNKNOWN`` when SLURM
    does not know it (any more)."""
    from submitit.slurm.slurm import SlurmJob

    states = {}
    for key, job in jobs.items():
        try:
            states[key] = SlurmJob(folder=folder, job_id=job["job_id"]).state.split()[0]
        except Exception:  # noqa: BLE001 - sacct missing or failing: the store still says what finished
            states[key] = "UNKNOWN"
    return states


def study_status(study: str, tracker: Any, workdir: Path, slurm: bool) -> list[dict[str, str]]:
    """One row per stage run of the study in the store (its newest attempt: done, failed,
    running, interrupted), and per submitted job the store has no run of yet (queued, running
    or lost by SLURM; submitted, for a local job).

    Args:
        study: the study's name.
        tracker: the store.
        workdir: where ``jobs/<study>/jobs.json`` is.
        slurm: ask SLURM for the state of the jobs.
    """
    folder = Path(workdir) / "jobs" / study
    jobs = _read_jobs(folder)
    rows: dict[tuple[str, str, str], dict[str, str]] = {}
    for run in tracker.stage_runs(study):  # newest first: the first of a key is its latest attempt
        tags = run.tags
        key = (tags.get(names.TAG_ARM, ""), tags.get(names.TAG_SEED, ""), tags.get(names.TAG_STAGE, ""))
        state = {"FINISHED": "done", "FAILED": "failed", "RUNNING": "running", "KILLED": "interrupted"}[run.status]
        rows.setdefault(key, {"arm": key[0], "seed": key[1], "stage": key[2], "state": state, "job": "", "run": run.run_id,
                              "hash": tags.get(names.TAG_CONFIG_HASH, "")})  # fmt: skip
    states = job_states(folder, {k: j for k, j in jobs.items() if j.get("executor") == "slurm"}) if slurm else {}
    for task_key, job in jobs.items():
        match = next((row for row in rows.values() if row["hash"] == job["hash"]), None)
        if match is not None:
            match["job"] = job["job_id"]
            continue
        state = states.get(task_key)
        on_slurm = slurm and job.get("executor") == "slurm"
        shown = "queued" if state in WAITING else "running" if state in RUNNING else ("lost" if on_slurm else "submitted")
        rows[(job["arm"], str(job["seed"]), job["stage"])] = {
            "arm": job["arm"], "seed": str(job["seed"]), "stage": job["stage"], "state": shown, "job": job["job_id"], "run": "",
            "hash": job["hash"],
        }  # fmt: skip
    seed = lambda row: int(row["seed"]) if row["seed"].isdigit() else -1  # noqa: E731
    return sorted(rows.values(), key=lambda row: (seed(row), row["stage"] != PRETRAIN.name, row["arm"]))


def _parameters(cluster: ClusterOptions, gpus: int, name: str, nodes: int) -> dict[str, Any]:
    params: dict[str, Any] = {
        "name": f"harness-{name}",
        "timeout_min": cluster.time,
        "nodes": nodes,
        "tasks_per_node": 1,  # one harness process per node; it starts the node's ranks itself
        "slurm_additional_parameters": dict(_sbatch_options(cluster)),
        "slurm_setup": list(cluster.setup),
    }
    if gpus:
        params["gpus_per_node"] = gpus
    optional = {"slurm_partition": cluster.partition, "cpus_per_task": cluster.cpus_per_task, "mem_gb": cluster.mem_gb,
                "slurm_account": cluster.account, "slurm_qos": cluster.qos}  # fmt: skip
    return {**params, **{key: value for key, value in optional.items() if value is not None}}


def _sbatch_options(cluster: ClusterOptions) -> list[tuple[str, str]]:
    options = []
    for line in cluster.sbatch:
        key, sep, value = line.removeprefix("--").partition("=")
        if not key or not sep:
            raise UserError(f"cluster.sbatch: {line!r} is not --key=value")
        options.append((key.replace("-", "_"), value))
    return options


def _job_record(task: Task, job_id: str) -> dict[str, Any]:
    return {"job_id": job_id, "arm": task.label, "seed": task.seed, "stage": task.stages[0].kind, "hash": task.stages[-1].hash}


def _read_jobs(folder: Path) -> dict[str, dict[str, Any]]:
    path = folder / JOBS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _write_jobs(folder: Path, jobs: Mapping[str, Mapping[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / JOBS_FILE, json.dumps(dict(jobs), indent=1, sort_keys=True))
