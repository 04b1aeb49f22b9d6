"""Where a sweep's trials live, which of them are alive, and the trial queue.

Storage: an Optuna journal file in the workdir by default (``<workdir>/sweeps/<name>/journal.log``,
safe for several processes on one machine), or any RDB URL (PostgreSQL, MySQL, SQLite) so that
workers on several machines join one study.

Liveness: a worker that dies leaves its trial RUNNING. On an RDB storage each running trial sends
Optuna's heartbeat; a trial silent for ``GRACE_S`` is failed by :func:`reap` and re-queued. The
journal storage has no heartbeat, so ours is a lock: the worker holds an ``flock`` on
``live/trial-<n>.lock`` for as long as the trial runs (and removes the file when it ends), and the
kernel drops the lock the moment the process dies. A RUNNING trial whose lock file is there and
free is dead; one with no lock file is dead once it is ``CLAIM_S`` old. Both rules wait ``MIN_AGE_S``,
which covers the instant between taking a trial from the queue and locking it.

Queue: a sweep with ``n_trials`` keeps exactly that many trials that count (every trial except a
FAIL that a re-queued copy replaces): :func:`fill_slots` enqueues empty WAITING trials for the
missing ones and workers take them (:func:`pop_waiting`), so parallel and resumed workers never run
one trial too many. An empty WAITING trial has no fixed values: the sampler samples it when taken.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from core.errors import UserError
from harness._locks import flock, is_held

__all__ = [
    "JOURNAL", "HEARTBEAT_S", "GRACE_S", "CLAIM_S", "MIN_AGE_S", "REQUEUE_OF", "ROOT", "FAIL_REASON", "TRACEBACK",
    "sweep_dir", "open_storage", "safe_url", "claim", "reap", "requeue", "requeue_failed",
    "pop_waiting", "fill_slots", "Counts", "counts", "superseded",
]

JOURNAL = "journal.log"
HEARTBEAT_S = 10  # RDB: seconds between a running trial's heartbeats
GRACE_S = 60  # RDB: a trial silent this long is dead
CLAIM_S = 30.0  # journal: a RUNNING trial this old without a lock file is dead
MIN_AGE_S = 5.0  # journal: no RUNNING trial younger than this is judged dead
REQUEUE_OF = "harness.requeue_of"  # user attr: the trial number a re-queued trial re-runs
ROOT = "harness.root"  # user attr: the first trial of a chain of re-runs (its runs' label)
FAIL_REASON = "fail_reason"  # user attr of a FAIL trial: why
TRACEBACK = "traceback"  # user attr of a FAIL trial that raised: the end of its traceback


def sweep_dir(workdir: str | Path, name: str) -> Path:
    """``<workdir>/sweeps/<name>/``: the journal, the liveness locks, the end-of-sweep figures."""
    return Path(workdir) / "sweeps" / name


def open_storage(url: str | None, folder: Path, heartbeat: bool = True) -> BaseStorage:
    """The sweep's Optuna storage.

    Args:
        url: an RDB URL (``postgresql://user@host/db``, ``mysql://...``, ``sqlite:///file.db``), or
            None for the journal file in ``folder``.
        folder: the sweep's folder (:func:`sweep_dir`).
        heartbeat: RDB: send heartbeats and fail silent trials (workers); False for a reader.

    Raises:
        UserError: the database cannot be reached or its driver is missing.
    """
    if url is None:
        folder.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(folder / JOURNAL)))
    kwargs: dict[str, Any] = {}
    if heartbeat:
        kwargs = {"heartbeat_interval": HEARTBEAT_S, "grace_period": GRACE_S, "heartbeat_stale_trial_callback": requeue}
    try:
        with _quiet():
            return RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **kwargs)
    except ImportError as err:
        raise UserError(f"--storage {safe_url(url)}: the database driver is not installed ({err})") from None
    except Exception as err:  # SQLAlchemy's OperationalError, ArgumentError, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"--storage {safe_url(url)}: cannot open the Optuna storage: {first}") from None


def safe_url(url: str | None) -> str:
    """The URL without its password, for logs and tags (``journal`` for the default)."""
    if url is None:
        return "journal"
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


@contextlib.contextmanager
def claim(study: optuna.Study, trial_id: int, number: int, folder: Path) -> Iterator[None]:
    """Mark the trial alive while the block runs: the heartbeat (RDB) or the lock (journal)."""
    storage = study._storage
    if isinstance(storage, RDBStorage) and storage.get_heartbeat_interval() is not None:
        stop = threading.Event()
        storage.record_heartbeat(trial_id)

        def beat() -> None:
            while not stop.wait(storage.get_heartbeat_interval()):
                storage.record_heartbeat(trial_id)

        thread = threading.Thread(target=beat, name=f"heartbeat-{number}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
    else:
        path = _live_lock(folder, number)
        with flock(path):
            try:
                yield
            finally:
                path.unlink(missing_ok=True)  # the trial is told: nothing left to judge


def reap(study: optuna.Study, folder: Path) -> list[int]:
    """Fail the trials whose worker died and re-queue each with the same values.

    Returns:
        The numbers of the trials failed here.
    """
    storage = study._storage
    if isinstance(storage, RDBStorage):
        running = {t._trial_id: t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        with _quiet():
            optuna.storages.fail_stale_trials(study)  # runs `requeue` on each (the storage's callback)
        return sorted(n for tid, n in running.items() if storage.get_trial(tid).state == TrialState.FAIL)
    dead = []
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = trial.datetime_start.timestamp() if trial.datetime_start else now
        lock = _live_lock(folder, trial.number)
        age = now - started
        if age < MIN_AGE_S or (not lock.exists() and age < CLAIM_S) or is_held(lock):
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, FAIL_REASON, "its worker died (its liveness lock was free)")
            if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another process reaped it first
        requeue(study, trial)
        lock.unlink(missing_ok=True)
        dead.append(trial.number)
    return dead


def requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue a WAITING copy of ``trial`` (its sampled values, its chain's root) that replaces it.

    The signature is Optuna's heartbeat callback's, so RDB storages call it for stale trials.
    """
    attrs = {ROOT: trial.user_attrs.get(ROOT, trial.number), REQUEUE_OF: trial.number}
    study.enqueue_trial(dict(trial.params), user_attrs=attrs)


def requeue_failed(study: optuna.Study) -> list[int]:
    """``--retry-failed``: re-queue every FAIL trial that no copy replaces yet; their numbers."""
    replaced = superseded(study.get_trials(deepcopy=False))
    failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number not in replaced]
    for trial in failed:
        requeue(study, trial)
    return [t.number for t in failed]


def pop_waiting(study: optuna.Study) -> int | None:
    """Take a WAITING trial for this worker (set it RUNNING); its id, or None when none is left.

    Two workers racing for one trial: the storage lets one set it RUNNING; the other tries the next.
    """
    storage = study._storage
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                return trial._trial_id
        except UpdateFinishedTrialError:
            continue
    return None


def fill_slots(study: optuna.Study, n_trials: int) -> int:
    """Enqueue empty trials until ``n_trials`` trials count; how many were added."""
    missing = n_trials - counts(study).counted
    for _ in range(max(0, missing)):
        study.enqueue_trial({})
    return max(0, missing)


def superseded(trials: list[FrozenTrial]) -> set[int]:
    """The numbers of trials that a re-queued copy replaces."""
    return {int(t.user_attrs[REQUEUE_OF]) for t in trials if REQUEUE_OF in t.user_attrs}


@dataclass(frozen=True)
class Counts:
    """Trials by state; a FAIL trial replaced by a re-queued copy counts as ``requeued``."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0
    requeued: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed

    @property
    def counted(self) -> int:
        """What the budget ``n_trials`` counts: every trial that no copy replaces."""
        return self.finished + self.running + self.waiting


def counts(study: optuna.Study) -> Counts:
    """The study's trials by state (see :class:`Counts`)."""
    trials = study.get_trials(deepcopy=False)
    replaced = superseded(trials)
    tally = {name: 0 for name in ("complete", "pruned", "failed", "running", "waiting", "requeued")}
    for trial in trials:
        if trial.state == TrialState.FAIL and trial.number in replaced:
            tally["requeued"] += 1
        else:
            tally[_STATE_NAMES[trial.state]] += 1
    return Counts(**tally)


_STATE_NAMES = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


def _live_lock(folder: Path, number: int) -> Path:
    return folder / "live" / f"trial-{number}.lock"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Optuna's experimental-feature warnings (heartbeat) say nothing to a harness user."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield
