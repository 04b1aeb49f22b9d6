"""The read side of the tracking store: what ``harness report`` needs, and nothing it does not.

Everything comes from the store alone (design.md, "Tracking store layout"): a study is an
experiment holding a parent run tagged ``harness.stage=study``; the parent carries the arm order
(``harness.arm_order``, a JSON list), the baseline (``harness.baseline``) and the study file
(artifact ``study.yaml``); every other run of the experiment is a stage run of one (arm, seed),
or a pre-training shared by several arms.

Metrics are read as a tidy frame, one row per (run, metric, step): the per-epoch ``val/*``
metrics with their whole history, every other metric as its latest value (``test/*`` is logged
once). A key logged twice at one step (a resumed run replays an epoch) counts with its latest
value, as the writer promises.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.entities import LifecycleStage, ViewType
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlRun, SqlTag
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.utils.file_utils import local_file_uri_to_path
from mlflow.utils.uri import is_file_uri
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

from core import metric_keys
from core.errors import UserError, did_you_mean
from harness.tracking import names
from harness.tracking.store import search_runs, sqlite_path

__all__ = [
    "StoredStudy", "FRAME_COLUMNS", "stored_studies", "runs_frame", "study_runs_frame", "load_ranks", "log_figures",
    "StoredSweep", "TRIAL_COLUMNS", "HISTORY_COLUMNS", "parent_kinds", "stored_sweep", "trials_frame",
]

# Columns of runs_frame, in order. start_time: epoch milliseconds (newest run wins a tie).
FRAME_COLUMNS = ("study", "arm", "seed", "stage", "run_id", "status", "start_time", "metric", "value", "step")
HISTORY_PREFIXES = (names.VAL_PREFIX,)  # per-epoch metrics read with their whole history (training curves)
# run id -> its artifact URI, from every search (a run's artifact URI never changes)
_ARTIFACT_URIS: dict[str, str] = {}
_STUDY_FILTER = f"tags.`{names.TAG_STAGE}` = '{names.STAGE_STUDY}'"  # the parent run
_STAGE_RUNS = f"tags.`{names.TAG_STAGE}` != '{names.STAGE_STUDY}'"  # every other run
_PARENT_STAGES = (names.STAGE_STUDY, names.STAGE_SWEEP)
# A sweep's trials: one row per trial run; `params` a dict of the sampled values, `value` the
# objective Optuna was told (missing unless complete), `epochs` the objective's epochs logged.
TRIAL_COLUMNS = ("sweep", "trial", "state", "run_id", "status", "params", "value", "epochs", "test_rsum", "requeue_of")
HISTORY_COLUMNS = ("sweep", "trial", "state", "epoch", "value")  # the objective per epoch


@dataclass(frozen=True)
class StoredStudy:
    """A study as the store holds it (its parent run and what that run carries).

    Attributes:
        name: the study (= experiment) name.
        parent_run_id: the study's parent run.
        arm_order: arm labels in the study's order (``harness.arm_order``); empty when untagged.
        baseline: the baseline arm (``harness.baseline``), or None when untagged.
        study_yaml: the study file's text (artifact ``study.yaml``), or None when absent.
        seeds: the seeds the last run asked for (``harness.seeds``; ``--seeds`` overrides the
            file's); empty when untagged.
        experiment_id: the study's experiment ("" when not known: looked up by name).
    """

    name: str
    parent_run_id: str
    arm_order: tuple[str, ...]
    baseline: str | None
    study_yaml: str | None
    seeds: tuple[int, ...] = ()
    experiment_id: str = ""


def stored_studies(uri: str, studies: Sequence[str] | None = None) -> list[StoredStudy]:
    """The studies in the store, in the order asked (or by name when ``studies`` is None).

    Args:
        uri: the tracking URI.
        studies: study names; None: every study in the store.

    Raises:
        UserError: the store is missing or holds no study; a name is not a study there (the
            message lists those that are).
    """
    client = _client(uri)
    return [_stored_study(client, name, run) for name, run in _parents(client, uri, studies)]


def runs_frame(uri: str, studies: Sequence[str] | None = None, history: Sequence[str] | None = None) -> pd.DataFrame:
    """Every stage run of the studies as a tidy frame, one row per (run, metric, step).

    Columns: ``FRAME_COLUMNS``. ``seed`` is a nullable integer; ``step`` is the epoch for a
    metric read with its per-epoch history and missing for a metric read as its latest value. A
    run that logged no metric (it failed early) keeps one row with ``metric`` and ``value``
    missing, so that it can still be listed.

    Args:
        uri: the tracking URI.
        studies: study names; None: every study in the store.
        history: the metrics read with their whole history; None: every ``val/*`` metric. A
            reader asks only for those it shows: through the client each is one request per run.

    Raises:
        UserError: as :func:`stored_studies`.
    """
    client = _client(uri)
    return _frame(client, [(name, parent.info.experiment_id) for name, parent in _parents(client, uri, studies)], history)


def study_runs_frame(uri: str, study: StoredStudy, history: Sequence[str] | None = None) -> pd.DataFrame:
    """:func:`runs_frame` of one study already found (:func:`stored_studies`), without looking
    up the store's studies again.

    Args:
        uri: the tracking URI.
        study: the study.
        history: as :func:`runs_frame`.
    """
    client = _client(uri)
    experiment = study.experiment_id or client.get_experiment_by_name(study.name).experiment_id
    return _frame(client, [(study.name, experiment)], history)


def _frame(client: MlflowClient, studies: Sequence[tuple[str, str]], history: Sequence[str] | None) -> pd.DataFrame:
    """The tidy frame of :func:`runs_frame` over ``(study name, experiment id)`` pairs."""
    rows = [row for name, experiment in studies for row in _study_rows(client, name, experiment, history)]
    frame = pd.DataFrame(rows, columns=list(FRAME_COLUMNS))
    frame["seed"] = frame["seed"].astype("Int64")
    frame["step"] = frame["step"].astype("Int64")
    frame["value"] = frame["value"].astype(float)
    return frame


def load_ranks(uri: str, run_id: str) -> dict[str, np.ndarray] | None:
    """The per-query ranks of a run's test evaluation (artifact ``ranks.npz``).

    Args:
        uri: the tracking URI.
        run_id: the run.

    Returns:
        ``{"i2t": (n_images,), "t2i": (n_texts,)}`` 0-based integer ranks, or None when the run
        has no ranks artifact (a run that failed, or one tracked before ranks were saved).

    Raises:
        UserError: the artifact is there but is not such a pair of rank arrays.
    """
    with _artifact(_client(uri), run_id, names.ARTIFACT_RANKS) as path:
        if path is None:
            return None
        try:
            with np.load(path) as data:
                ranks = {key: np.asarray(data[key]) for key in data.files}
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise UserError(f"run {run_id}: {names.ARTIFACT_RANKS} is not a readable .npz file ({err})") from None
    bad = [k for k in ("i2t", "t2i") if k not in ranks or ranks[k].ndim != 1 or ranks[k].dtype.kind not in "iu"]
    if bad:
        raise UserError(
            f"run {run_id}: {names.ARTIFACT_RANKS} should hold 1-D integer arrays 'i2t' and 't2i';"
            f" bad or missing: {bad} (it has {sorted(ranks)})"
        )
    return {"i2t": ranks["i2t"], "t2i": ranks["t2i"]}


def log_figures(uri: str, parent_run_id: str, paths: Iterable[str | os.PathLike]) -> None:
    """Attach files (the report's figures) to a study's parent run, under ``figures/``, so
    that they show in the MLflow UI. A file logged again replaces the earlier one.

    Args:
        uri: the tracking URI.
        parent_run_id: the study's parent run (:attr:`StoredStudy.parent_run_id`).
        paths: local files.
    """
    client = _client(uri)
    for path in paths:
        client.log_artifact(parent_run_id, str(path), names.ARTIFACT_FIGURES)


# ---------------------------------------------------------------------------------- internals
def _client(uri: str) -> MlflowClient:
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        # MlflowClient would quietly create an empty store there.
        raise UserError(f"no tracking store at {db} (from {uri}); run a study first, or pass --tracking-uri")
    # A report downloads a few small files per run; MLflow's progress bar for each would bury
    # the report's own output. The user's explicit setting wins.
    os.environ.setdefault(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name, "false")
    return MlflowClient(tracking_uri=uri)


def _all_parents(client: MlflowClient, stage: str) -> dict[str, object]:
    """{experiment name: its oldest parent run of ``stage``} over the store, in one search."""
    experiments = {e.experiment_id: e.name for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)}
    found = {}
    for parent in _search(client, list(experiments), f"tags.`{names.TAG_STAGE}` = '{stage}'", order="asc"):
        found.setdefault(experiments[parent.info.experiment_id], parent)  # oldest first
    return found


def _parents(client: MlflowClient, uri: str, studies: Sequence[str] | None) -> list[tuple[str, object]]:
    """(study name, parent run) of each study asked for, checked against the store."""
    found = _all_parents(client, names.STAGE_STUDY)
    if not found:
        raise UserError(f"no studies in the tracking store {uri}; run one first (harness run STUDY.yaml)")
    if studies is None:
        return sorted(found.items())
    for name in studies:
        if name not in found:
            raise UserError(
                f"no study '{name}' in the tracking store {uri}{did_you_mean(name, found)}; studies there: {', '.join(sorted(found))}"
            )
    return [(name, found[name]) for name in dict.fromkeys(studies)]


def _stored_study(client: MlflowClient, name: str, parent) -> StoredStudy:
    tags = parent.data.tags
    order = json.loads(tags[names.TAG_ARM_ORDER]) if names.TAG_ARM_ORDER in tags else []
    return StoredStudy(
        name=name,
        parent_run_id=parent.info.run_id,
        arm_order=tuple(str(label) for label in order),
        baseline=tags.get(names.TAG_BASELINE),
        study_yaml=_artifact_text(client, parent.info.run_id, names.ARTIFACT_STUDY),
        seeds=tuple(int(s) for s in json.loads(tags.get(names.TAG_SEEDS, "[]"))),
        experiment_id=parent.info.experiment_id,
    )


def _artifact_text(client: MlflowClient, run_id: str, name: str) -> str | None:
    with _artifact(client, run_id, name) as path:
        return None if path is None else path.read_text()


@contextlib.contextmanager
def _artifact(client: MlflowClient, run_id: str, name: str) -> Iterator[Path | None]:
    """A top-level artifact as a local file (None when the run lacks it).

    Found from the run's artifact URI, known from the search that found the run: asking by run
    id costs a ``get_run`` plus a listing per artifact, which over a 1,000-run report was most of
    its time. An artifact store on this file system is read in place; any other is downloaded
    into a temporary folder, and only a failed download lists the run's artifacts, to tell a
    missing artifact (None) from a real error (raised).
    """
    root = _ARTIFACT_URIS.get(run_id) or client.get_run(run_id).info.artifact_uri
    if is_file_uri(root) or "://" not in root:
        path = Path(local_file_uri_to_path(root)) / name
        yield path if path.is_file() else None
        return
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = download_artifacts(artifact_uri=f"{root.rstrip('/')}/{name}", dst_path=tmp, tracking_uri=client.tracking_uri)
        except MlflowException:
            if name in {item.path for item in client.list_artifacts(run_id)}:
                raise
            path = None
        yield None if path is None else Path(path)


def _search(client: MlflowClient, experiment_id: str | Sequence[str], query: str, order: str = "desc") -> Iterator:
    for run in search_runs(client, experiment_id, query, order):
        _ARTIFACT_URIS[run.info.run_id] = run.info.artifact_uri
        yield run


@dataclass(frozen=True)
class _StageRun:
    """What the frame needs of a stage run: its info, its tags and its latest metric values."""

    run_id: str
    status: str
    start_time: int | None
    tags: Mapping[str, str]
    metrics: Mapping[str, float]


def _study_rows(client: MlflowClient, study: str, experiment: str, history: Sequence[str] | None) -> list[tuple]:
    """The frame's rows of one study's stage runs, newest run first."""
    store = _sql_store(client)
    if store is not None:
        runs, histories = _sql_stage_runs(store, experiment, history)
    else:
        runs = [
            _StageRun(run.info.run_id, run.info.status, run.info.start_time, run.data.tags, run.data.metrics)
            for run in _search(client, experiment, _STAGE_RUNS)
        ]
        histories = {
            (run.run_id, key): _history(client, run.run_id, key)
            for run in runs for key in run.metrics if _with_history(key, history)
        }
    return [row for run in runs for row in _run_rows(study, run, histories)]


def _next_string(prefix: str) -> str:
    """The least string greater than every string starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _with_history(key: str, history: Sequence[str] | None) -> bool:
    return key.startswith(HISTORY_PREFIXES) if history is None else key in history


def _run_rows(study: str, run: _StageRun, histories: Mapping[tuple[str, str], list[tuple[int, float]]]) -> list[tuple]:
    seed = run.tags.get(names.TAG_SEED)
    head = (
        study,
        run.tags.get(names.TAG_ARM),
        int(seed) if seed is not None and seed.lstrip("-").isdigit() else None,
        run.tags.get(names.TAG_STAGE),
        run.run_id,
        run.status,
        run.start_time,
    )
    rows = []
    for key, value in sorted(run.metrics.items()):
        steps = histories.get((run.run_id, key))
        if steps is not None:
            rows += [(*head, key, v, step) for step, v in steps]
        else:
            rows.append((*head, key, value, None))
    return rows or [(*head, None, np.nan, None)]


def _sql_store(client: MlflowClient) -> SqlAlchemyStore | None:
    """The client's store when it is MLflow's SQL store, else None. MLflow has no public handle
    on it; without one (another store, or a later MLflow) the report reads through the client."""
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    return store if isinstance(store, SqlAlchemyStore) else None


def _sql_stage_runs(
    store: SqlAlchemyStore, experiment: str, history: Sequence[str] | None
) -> tuple[list[_StageRun], dict[tuple[str, str], list[tuple[int, float]]]]:
    """:func:`_study_rows`'s runs and histories in four column queries over MLflow's own table
    models. ``search_runs`` builds an ORM object for every param, tag and metric of every run
    (about 120 per run, none of which the report reads): over 1,000 runs that was most of the
    report's reading time. Same runs (active, tagged as a stage, not the parent), same order
    (newest first, then by id) and same values (NaN as MLflow stores it) as the client path."""
    wanted = (names.TAG_STAGE, names.TAG_ARM, names.TAG_SEED)
    active_in_experiment = (SqlRun.experiment_id == int(experiment), SqlRun.lifecycle_stage == LifecycleStage.ACTIVE)
    with store.ManagedSessionMaker() as session:
        infos = (
            session.query(SqlRun.run_uuid, SqlRun.status, SqlRun.start_time, SqlRun.artifact_uri)
            .filter(*active_in_experiment)
            # nulls last as MLflow orders them (a CASE: MSSQL takes no boolean in ORDER BY)
            .order_by(sa.case((SqlRun.start_time.is_(None), 1), else_=0), SqlRun.start_time.desc(), SqlRun.run_uuid)
            .all()
        )
        tags: dict[str, dict[str, str]] = {}
        for run_id, key, value in (
            session.query(SqlTag.run_uuid, SqlTag.key, SqlTag.value)
            .join(SqlRun, SqlRun.run_uuid == SqlTag.run_uuid)
            .filter(*active_in_experiment, SqlTag.key.in_(wanted))
        ):
            tags.setdefault(run_id, {})[key] = value
        metrics: dict[str, dict[str, float]] = {}
        for run_id, key, value, is_nan in (
            session.query(SqlLatestMetric.run_uuid, SqlLatestMetric.key, SqlLatestMetric.value, SqlLatestMetric.is_nan)
            .join(SqlRun, SqlRun.run_uuid == SqlLatestMetric.run_uuid)
            .filter(*active_in_experiment)
        ):
            metrics.setdefault(run_id, {})[key] = math.nan if is_nan else value
        # A range, not LIKE (which ignores case in SQLite and MySQL, and skips the key's index);
        # _with_history below decides, as on the client path (MySQL compares without case too).
        keys = (
            SqlMetric.key.in_(list(history))
            if history is not None
            else sa.or_(*(sa.and_(SqlMetric.key >= prefix, SqlMetric.key < _next_string(prefix)) for prefix in HISTORY_PREFIXES))
        )
        by_step: dict[tuple[str, str], dict[int, float]] = {}
        # In get_metric_history's order (the order of logging): the last value of a step wins.
        for run_id, key, step, value, is_nan in (
            session.query(SqlMetric.run_uuid, SqlMetric.key, SqlMetric.step, SqlMetric.value, SqlMetric.is_nan)
            .join(SqlRun, SqlRun.run_uuid == SqlMetric.run_uuid)
            .filter(*active_in_experiment, keys)
            .order_by(SqlMetric.timestamp, SqlMetric.step, SqlMetric.value)
        ):
            if _with_history(key, history):
                by_step.setdefault((run_id, key), {})[step] = math.nan if is_nan else value
    runs = []
    for run_id, status, start_time, artifact_uri in infos:
        own = tags.get(run_id, {})
        if own.get(names.TAG_STAGE, names.STAGE_STUDY) == names.STAGE_STUDY:  # the parent, or untagged
            continue
        _ARTIFACT_URIS[run_id] = artifact_uri
        runs.append(_StageRun(run_id, status, start_time, own, metrics.get(run_id, {})))
    kept = {run.run_id for run in runs}
    histories = {where: sorted(steps.items()) for where, steps in by_step.items() if where[0] in kept}
    return runs, histories


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) per step, the latest-logged value where a step was logged twice."""
    latest = {}
    for metric in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp):
        latest[metric.step] = metric.value
    return sorted(latest.items())


# ------------------------------------------------------------------------------------- sweeps
@dataclass(frozen=True)
class StoredSweep:
    """A sweep as the store holds it.

    Attributes:
        name: the sweep (= experiment) name.
        parent_run_id: the sweep's parent run.
        objective: the objective metric (``val/<metric>``).
        direction: ``maximize`` or ``minimize``.
        spec_yaml: the spec's text (artifact ``sweep.yaml``), or None when absent.
    """

    name: str
    parent_run_id: str
    objective: str
    direction: str
    spec_yaml: str | None


def parent_kinds(uri: str) -> dict[str, str]:
    """``{name: "study" | "sweep"}`` for every study and sweep in the store.

    Args:
        uri: the tracking URI.

    Raises:
        UserError: there is no store at a SQLite URI.
    """
    client = _client(uri)
    return {name: stage for stage in _PARENT_STAGES for name in _all_parents(client, stage)}


def stored_sweep(uri: str, name: str) -> StoredSweep:
    """One sweep's parent-run record.

    Args:
        uri: the tracking URI.
        name: the sweep's name.

    Raises:
        UserError: no such sweep (the message lists those there).
    """
    client = _client(uri)
    found = _all_parents(client, names.STAGE_SWEEP)
    if name not in found:
        raise UserError(
            f"no sweep '{name}' in the tracking store {uri}{did_you_mean(name, found)}; sweeps there: {', '.join(sorted(found)) or 'none'}"
        )
    parent = found[name]
    tags = parent.data.tags
    return StoredSweep(
        name=name,
        parent_run_id=parent.info.run_id,
        objective=tags.get(names.TAG_OBJECTIVE, names.val_metric(metric_keys.RSUM)),
        direction=tags.get(names.TAG_DIRECTION, "maximize"),
        spec_yaml=_artifact_text(client, parent.info.run_id, names.ARTIFACT_SWEEP),
    )


def trials_frame(uri: str, sweep: StoredSweep) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A sweep's trial runs: one row each (``TRIAL_COLUMNS``), and the objective's per-epoch
    history (``HISTORY_COLUMNS``). A trial re-run after its worker died is one run (the latest
    trial number); its shared pre-training runs are not trials.

    Args:
        uri: the tracking URI.
        sweep: the sweep's record (:func:`stored_sweep`).
    """
    client = _client(uri)
    experiment = client.get_run(sweep.parent_run_id).info.experiment_id
    query = f"tags.`{names.TAG_TRIAL}` != ''"
    trials, history = [], []
    for run in _search(client, experiment, query, order="asc"):
        tags = run.data.tags
        number = int(tags[names.TAG_TRIAL])
        state = tags.get(names.TAG_TRIAL_STATE, "running")
        value = float(tags[names.TAG_TRIAL_VALUE]) if names.TAG_TRIAL_VALUE in tags else np.nan
        steps = _history(client, run.info.run_id, sweep.objective) if sweep.objective in run.data.metrics else []
        history += [(sweep.name, number, state, step, v) for step, v in steps]
        test = run.data.metrics.get(names.test_metric(metric_keys.RSUM), np.nan)
        params = json.loads(tags.get(names.TAG_TRIAL_PARAMS, "{}"))
        requeue_of = int(tags[names.TAG_REQUEUE_OF]) if names.TAG_REQUEUE_OF in tags else None
        trials.append((sweep.name, number, state, run.info.run_id, run.info.status, params, value, len(steps), test, requeue_of))
    frame = pd.DataFrame(trials, columns=list(TRIAL_COLUMNS)).sort_values("trial", kind="stable", ignore_index=True)
    frame["requeue_of"] = frame["requeue_of"].astype("Int64")
    return frame, pd.DataFrame(history, columns=list(HISTORY_COLUMNS))
