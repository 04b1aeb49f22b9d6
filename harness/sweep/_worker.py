"""A sweep worker: take a queued trial, run it, tell Optuna, until the queue and the budget end.

Workers are independent processes that share only the storage and the workdir (several on one
machine, or on several machines with an RDB storage). Before each trial a worker fails and
re-queues the trials of dead workers, so a killed worker's trial is run again by whoever is left.
A worker leaves when nothing is queued and no trial is running (a running trial may still die and
be re-queued), or when the timeout has passed.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from harness.config import resolve
from harness.execute import TaskContext
from harness.sweep._samplers import make_pruner, make_sampler
from harness.sweep._spec import SweepSpec
from harness.sweep._storage import claim, open_storage, pop_waiting, reap
from harness.sweep._trial import TrialResult, run_trial, tell

__all__ = ["SweepJob", "work", "work_in_child", "open_study", "objective_epochs"]

POLL_S = 1.0  # seconds between looks at the queue while other workers' trials run


@dataclass(frozen=True)
class SweepJob:
    """What a worker needs; plain data so it crosses process boundaries."""

    spec: SweepSpec
    overrides: Mapping[str, Any]
    storage_url: str | None
    folder: str  # the sweep's folder (journal, liveness locks)
    context: TaskContext
    deadline: float | None  # time.time() after which no trial starts


def objective_epochs(spec: SweepSpec, overrides: Mapping[str, Any]) -> int:
    """Epochs of the stage the objective is read from, in the spec's base config (pruner steps)."""
    config = resolve(spec.setting, overrides, layers=[("sweep base", spec.base)])
    return config.finetune.epochs if config.finetune.enabled else config.pretrain.epochs


def open_study(job: SweepJob, heartbeat: bool = True) -> optuna.Study:
    """The sweep's Optuna study in this process, with the spec's pruner."""
    spec = job.spec
    pruner = make_pruner(spec.pruner.name, spec.pruner.args, objective_epochs(spec, job.overrides))
    storage = open_storage(job.storage_url, Path(job.folder), heartbeat=heartbeat)
    return optuna.load_study(study_name=spec.name, storage=storage, pruner=pruner)


def work(job: SweepJob, threads: int | None = None) -> int:
    """Run trials until none is left; returns how many this worker ran.

    Args:
        job: the sweep.
        threads: torch threads for this worker (None: torch's default); K workers on one machine
            share its cores.
    """
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the harness shows its own progress
    study = open_study(job)
    spec, folder = job.spec, Path(job.folder)
    distributions = spec.distributions()
    ran = 0
    while job.deadline is None or time.time() < job.deadline:
        reap(study, folder)
        trial_id = pop_waiting(study)
        if trial_id is None and spec.n_trials is None:
            study.enqueue_trial({})  # a timeout-only budget: one more trial, taken next time round
            continue
        if trial_id is None:
            if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                break
            time.sleep(POLL_S)
            continue
        number = study._storage.get_trial_number_from_id(trial_id)
        # Seeded per trial number: reproducible, and no two workers draw the same random values.
        seed = None if spec.sampler.seed is None else spec.sampler.seed + number
        study.sampler = make_sampler(spec.sampler.name, spec.sampler.args, seed, distributions)
        with claim(study, trial_id, number, folder):
            trial = optuna.Trial(study, trial_id)
            try:
                result = run_trial(spec, trial, job.context, job.overrides)
            except Exception as exc:  # a bug or an I/O error in this trial: FAIL it, go on
                result = TrialResult(TrialState.FAIL, reason=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
            tell(study, trial, result)
        ran += 1
    return ran


def work_in_child(job: SweepJob, threads: int) -> None:
    """The target of a spawned worker process."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    work(job, threads)
