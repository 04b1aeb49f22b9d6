"""``harness sweep --optuna``: open (or resume) the sweep, queue its trials, run the workers, show
progress, and at the end record the best trial, write the figures and export the best config.

Re-running the same command resumes the same sweep: the trials already finished count towards
``n_trials``, those a dead process left RUNNING are failed and re-queued with the same values, and
only the missing ones are queued, so no trial is lost and none is run twice.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from core.errors import UserError
from core.runtime import usable_cores
from harness.config import config_to_yaml, parse_set, resolve
from harness.execute import TaskContext
from harness.sweep import _samplers
from harness.sweep._export import export_best
from harness.sweep._spec import SweepSpec, load_sweep
from harness.sweep._storage import Counts, counts, fill_slots, open_storage, reap, requeue_failed, safe_url, sweep_dir
from harness.sweep._worker import SweepJob, objective_epochs, open_study, work, work_in_child
from harness.tracking import Tracker, init_store, names, provenance

__all__ = ["SweepResult", "SweepReporter", "Snapshot", "run_sweep", "snapshot"]

SPACE_ATTR = "harness.space"  # study user attr: the space the sweep was started with (JSON)
_POLL_S = 1.0


@dataclass(frozen=True)
class Snapshot:
    """The sweep as the progress view shows it."""

    counts: Counts
    n_trials: int | None
    best_value: float | None
    best_trial: int | None


class SweepReporter:
    """Receives progress snapshots; the CLI subclasses it with a rich view. Prints nothing."""

    def __enter__(self) -> SweepReporter:
        return self

    def __exit__(self, *exc: Any) -> None: ...
    def update(self, snap: Snapshot) -> None: ...


@dataclass
class SweepResult:
    """The sweep after this command: its trials (as stored), the best, and what was written."""

    spec: SweepSpec
    trials: list[FrozenTrial]
    counts: Counts
    best: FrozenTrial | None
    parent_run_id: str
    figures: list[Path]
    exported: Path | None


def snapshot(study: optuna.Study, n_trials: int | None) -> Snapshot:
    """Counts by state and the best complete trial so far."""
    best = _best(study)
    return Snapshot(counts(study), n_trials, best.value if best else None, best.number if best else None)


def run_sweep(
    path: str | os.PathLike,
    *,
    workdir: Path,
    tracking_uri: str,
    storage: str | None = None,
    workers: int = 1,
    retry_failed: bool = False,
    overrides: tuple[str, ...] = (),
    export_path: Path | None = None,
    reporter: SweepReporter | None = None,
) -> SweepResult:
    """Run (or resume) a sweep.

    Args:
        path: the sweep spec YAML.
        workdir: caches, stage outputs, the journal storage.
        tracking_uri: the MLflow store.
        storage: an RDB URL for the Optuna storage; None: the journal file in the workdir.
        workers: local worker processes (1: in this process).
        retry_failed: re-queue the failed trials with the same values.
        overrides: ``--set KEY=VALUE`` items applied to every trial.
        export_path: write a study file that re-runs the best config with the spec's seeds.
        reporter: progress sink.

    Raises:
        UserError: a bad spec, an unreachable storage, or a stored sweep of that name with another
            space or direction.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the harness shows its own progress
    set_values = dict(parse_set(item) for item in overrides)
    spec = load_sweep(path, set_values)
    workdir = Path(workdir).resolve()
    folder = sweep_dir(workdir, spec.name)
    study = _open(spec, open_storage(storage, folder, heartbeat=False), storage)
    _prepare_data(spec, set_values, workdir)
    init_store(tracking_uri)  # the store's schema, once, before any worker
    prov = provenance()
    tracker = Tracker(tracking_uri, provenance=prov)
    parent = tracker.study_run(spec.name, spec.description, stage=names.STAGE_SWEEP)
    _log_spec(tracker, parent, spec, Path(path), storage, set_values)
    context = TaskContext(str(workdir), tracking_uri, spec.name, parent, retry_failed, prov)
    started = time.time()
    job = SweepJob(spec, set_values, storage, str(folder), context, started + spec.timeout if spec.timeout else None)
    live = open_study(job)  # with the heartbeat callback: reaping re-queues
    reap(live, folder)
    if retry_failed:
        requeue_failed(live)
    if spec.n_trials is not None:
        fill_slots(live, spec.n_trials)
    reporter = reporter or SweepReporter()
    with reporter:
        stop = threading.Event()
        watcher = threading.Thread(target=_watch, args=(study, spec.n_trials, reporter, stop), daemon=True)
        watcher.start()
        try:
            _run_workers(job, workers)
        finally:
            stop.set()
            watcher.join()
            reporter.update(snapshot(study, spec.n_trials))
    trials = study.get_trials(deepcopy=False)
    best = _best(study)
    _log_best(tracker, parent, study, best)
    figures = _figures(tracking_uri, spec.name, folder) if best is not None else []
    tracker.end_run(parent, "FINISHED")
    exported = export_best(spec, best, export_path, set_values) if export_path is not None else None
    return SweepResult(spec, list(trials), counts(study), best, parent, figures, exported)


# ---------------------------------------------------------------------------------- internals
def _open(spec: SweepSpec, storage: Any, url: str | None) -> optuna.Study:
    """Create the study, or load it and check that it is the same search."""
    space = json.dumps({k: p.model_dump(mode="json") for k, p in spec.space.items()}, sort_keys=True)
    study = optuna.create_study(
        study_name=spec.name, storage=storage, direction=spec.objective.direction, load_if_exists=True
    )
    stored_space = study.user_attrs.get(SPACE_ATTR)
    where = f"the Optuna storage ({safe_url(url)})"
    if stored_space is None:
        study.set_user_attr(SPACE_ATTR, space)
        study.set_user_attr(names.TAG_OBJECTIVE, spec.objective.metric)  # the same name as on its MLflow run
    elif stored_space != space:
        raise UserError(
            f"sweep '{spec.name}' in {where} searches another space ({stored_space});"
            " give the changed spec a new name, or restore its space"
        )
    if study.direction.name.lower() != spec.objective.direction:
        raise UserError(
            f"sweep '{spec.name}' in {where} {study.direction.name.lower()}s its objective;"
            f" the spec says {spec.objective.direction}"
        )
    return study


def _prepare_data(spec: SweepSpec, overrides: Mapping[str, Any], workdir: Path) -> None:
    """Decode the data cache once, here, before workers that would each start to build it."""
    from core.data import prepare

    config = resolve(spec.setting, overrides, layers=[("sweep base", spec.base)])
    prepare(config.data, workdir / "data")


def _log_spec(tracker: Tracker, parent: str, spec: SweepSpec, path: Path, url: str | None, overrides: Mapping[str, Any]) -> None:
    sampler = _samplers.settings("sampler", spec.sampler.name, spec.sampler.args, seed=spec.sampler.seed)
    pruner_args = dict(spec.pruner.args)
    if spec.pruner.name == "hyperband":
        pruner_args.setdefault("max_resource", objective_epochs(spec, overrides))
    pruner = _samplers.settings("pruner", spec.pruner.name, pruner_args)
    tracker.set_tags(parent, {
        names.TAG_OBJECTIVE: spec.objective.metric,
        names.TAG_DIRECTION: spec.objective.direction,
        names.TAG_SAMPLER: json.dumps(sampler, sort_keys=True),
        names.TAG_PRUNER: json.dumps(pruner, sort_keys=True),
        names.TAG_STORAGE: safe_url(url),
    })
    text = path.read_text()
    if overrides:
        text += "\n# --set " + " --set ".join(f"{k}={v}" for k, v in overrides.items()) + "\n"
    tracker.log_artifact_text(parent, names.ARTIFACT_SWEEP, text)
    base = resolve(spec.setting, overrides, layers=[("sweep base", spec.base)])
    tracker.log_artifact_text(parent, names.ARTIFACT_CONFIG, config_to_yaml(base))


def _run_workers(job: SweepJob, workers: int) -> None:
    if workers <= 1:
        work(job)
        return
    threads = max(1, usable_cores() // workers)
    spawn = mp.get_context("spawn")
    processes = [spawn.Process(target=work_in_child, args=(job, threads), name=f"sweep-worker-{i}") for i in range(workers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()


def _watch(study: optuna.Study, n_trials: int | None, reporter: SweepReporter, stop: threading.Event) -> None:
    while not stop.wait(_POLL_S):
        try:
            reporter.update(snapshot(study, n_trials))
        except Exception:  # a read racing a write: the next poll shows it
            continue


def _best(study: optuna.Study) -> FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    return pick(complete, key=lambda t: (t.value, -t.number) if pick is max else (t.value, t.number))


def _log_best(tracker: Tracker, parent: str, study: optuna.Study, best: FrozenTrial | None) -> None:
    done = counts(study).finished
    if best is None:
        return
    tracker.log_metrics(parent, {names.BEST_VALUE: best.value}, step=done)
    tracker.set_tags(parent, {names.TAG_BEST_TRIAL: best.number, names.TAG_BEST_PARAMS: json.dumps(best.params, sort_keys=True)})


def _figures(uri: str, name: str, folder: Path) -> list[Path]:
    from harness.report import write_sweep_report  # matplotlib and the store reader only here

    return [p for p in write_sweep_report(uri, name, folder / "report") if p.suffix in (".png", ".pdf")]

