"""The MLflow tracking store: a thin ``Tracker`` over ``MlflowClient`` (this package is the only
one that imports mlflow).

The client API, not MLflow's fluent ``mlflow.start_run`` (one global active run per process), so
one process can hold the study's parent run and any number of stage runs at once.

Layout (design.md): experiment = study name; one parent run per study (``harness.stage=study``,
reused on re-runs); one child run per (arm, seed, stage) tagged with ``harness.*`` and ``git.*``.

Ownership (:mod:`harness.tracking.lease`, docs/reliability.md): :meth:`Tracker.claim_run` opens
the run of one (arm, seed, stage, config hash) *for this process*, which then owns it (an owner tag
and a heartbeat) until :meth:`Tracker.end_run`. Processes sharing the store, in any workdir on any
machine, so never run the same key twice: a FINISHED run is the result, a RUNNING run whose owner
is alive is busy, and only the runs of dead processes are taken over. A process killed with
``kill -9`` leaves its runs RUNNING: :meth:`Tracker.reap_unfinished` marks those whose owner is dead
KILLED, and :meth:`Tracker.claim_run` *resumes* the KILLED run of the key instead of opening a new
one: the stage resumes from its last epoch checkpoint and keeps logging into the same run. The store
so ends with exactly one FINISHED run per (arm, seed, stage) and no RUNNING orphans. FAILED runs are
never resumed: they keep their traceback, and a retry opens a new run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from core.errors import UserError
from harness._locks import flock
from harness.tracking import lease, names
from harness.tracking.lineage import provenance

__all__ = [
    "RunStatus", "RunKey", "Claim", "Tracker", "init_store", "probe_store", "default_tracking_uri", "safe_uri",
]

RunStatus = Literal["RUNNING", "FINISHED", "FAILED", "KILLED"]
TRUNCATED = "...[truncated]"
PROBE_TIMEOUT_S = 5  # seconds a tracking server or database has to answer before any work starts
SQL_SCHEMES = ("postgresql", "mysql", "mssql")  # MLflow retries these for ~100 s: ping them first
SCHEMES = ("sqlite", "http", "https", "file", "databricks", "databricks-uc", "uc", *SQL_SCHEMES)  # MLflow's
PAGE_SIZE = 1000  # runs per search request
CLAIM_ATTEMPTS = 5  # two processes that open the same run at once both step back, then try again


def default_tracking_uri(workdir: str | os.PathLike) -> str:
    """The project's default store: ``sqlite:///<workdir>/mlflow.db`` (absolute path).

    Args:
        workdir: the harness working directory.
    """
    return f"sqlite:///{(Path(workdir).resolve() / 'mlflow.db').as_posix()}"


def init_store(uri: str) -> None:
    """Check that the store answers (:func:`probe_store`), then create (or migrate) its schema;
    call it once, before any worker process starts and before any work.

    MLflow creates and migrates a SQL store's tables the first time a client touches it. Several
    processes doing that at once on a fresh SQLite file race and crash ("table already exists",
    "duplicate column name"), so the parent process does it first, alone, holding a lock file
    beside the database (two studies started at once take turns). Idempotent.

    Args:
        uri: the tracking URI (any scheme).

    Raises:
        UserError: as :func:`probe_store`, or a folder that cannot hold the SQLite file.
    """
    shown = safe_uri(uri)
    db = sqlite_path(uri)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"tracking store {shown}: cannot create {db.parent} ({err.strerror})") from None
    probe_store(uri)
    # two `harness run`s started at once on a fresh SQLite file would migrate it together and
    # crash ("duplicate column name"): the file's lock serialises them
    lock = flock(db.with_name(db.name + ".init.lock")) if db is not None else contextlib.nullcontext()
    try:
        with lock:
            if db is not None and db.is_file():  # before MLflow holds a connection: leaving WAL needs the file alone
                _write_ahead(db)
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
            if db is not None:
                _write_ahead(db)
    except Exception as err:  # whatever MLflow or the driver raise: one line, the URI, the cause
        raise UserError(f"tracking store {shown}: {_first_line(err)}") from None


def _write_ahead(db: Path) -> None:
    """Put a SQLite store on a local disk in write-ahead-log mode (it stays in the file, for every
    later connection): a commit then syncs one log instead of a rollback journal's several
    (measured, writing bench report's store: 73 against 86 ms a run on an idle 2-core machine, 109
    against 206 on a busy one), and a reader (a report, the UI) no longer blocks the workers'
    writes. On a network file system, the rollback journal, also for a store that was moved
    there: the log's index lives in shared memory, which processes on different hosts do not
    share (sqlite.org/wal.html). A store locked by a writer for over a second keeps its mode."""
    kind = _filesystem_type(db.resolve().parent)
    if kind is None:
        return
    mode = "DELETE" if kind.split(".")[0] in _NETWORK_FILESYSTEMS else "WAL"
    with contextlib.suppress(sqlite3.Error), contextlib.closing(sqlite3.connect(db, timeout=1.0)) as conn:
        if conn.execute("PRAGMA journal_mode").fetchone()[0].upper() != mode:
            conn.execute(f"PRAGMA journal_mode={mode}")


# file systems several hosts (or a VM and its host) mount; fuse.* (sshfs, s3fs, ...) counts as its first part
_NETWORK_FILESYSTEMS = (
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs", "panfs", "wekafs",
    "ocfs2", "gfs2", "orangefs", "9p", "afs", "fuse", "virtiofs", "vboxsf", "drvfs",
)  # fmt: skip


def _filesystem_type(folder: Path) -> str | None:
    """The type of the file system holding ``folder`` (Linux), or None where that is not known."""
    try:
        return mount_type(str(folder.resolve()), Path("/proc/self/mounts").read_text())
    except OSError:
        return None


def mount_type(path: str, mounts: str) -> str | None:
    """The type of the longest mount point holding the absolute ``path`` in a mount table (the
    format of /proc/self/mounts), or None."""
    point, kind = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        mount = fields[1].replace("\\040", " ")  # the table escapes spaces
        if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(point):
            point, kind = mount, fields[2]
    return kind


def probe_store(uri: str) -> None:
    """Check that a tracking server or database answers within :data:`PROBE_TIMEOUT_S` seconds
    (MLflow on its own retries for minutes), and that the URI's scheme is one MLflow knows;
    writes nothing.

    Args:
        uri: the tracking URI.

    Raises:
        UserError: one line naming the URI (password hidden) and the cause.
    """
    shown = safe_uri(uri)
    scheme = uri.split(":", 1)[0].split("+")[0].lower() if "://" in uri else ""
    if scheme and scheme not in SCHEMES:
        raise UserError(
            f"tracking store {shown}: unknown scheme '{scheme}' (use sqlite:///PATH, http(s)://HOST:PORT"
            " or a database URL: postgresql://, mysql://, mssql://)"
        )
    if scheme == "sqlite":
        return  # a local file: init_store creates it, readers find it or not
    if scheme in SQL_SCHEMES:
        _within(PROBE_TIMEOUT_S, lambda: _ping_database(uri), shown)
        return
    with _http_without_retries():
        _within(PROBE_TIMEOUT_S * 2, lambda: MlflowClient(tracking_uri=uri).search_experiments(max_results=1), shown)


def safe_uri(uri: str) -> str:
    """The URI with its password replaced by ``***`` (for messages and tags).

    Args:
        uri: a tracking URI.
    """
    return re.sub(r"(//[^/:@]*:)[^/@]*@", r"\1***@", uri)


def _ping_database(uri: str) -> None:
    import sqlalchemy

    with sqlalchemy.create_engine(uri).connect() as connection:
        connection.execute(sqlalchemy.text("SELECT 1"))


def _http_without_retries() -> contextlib.AbstractContextManager[None]:
    """MLflow's HTTP client retries 7 times with backoff (minutes) and waits 120 s per request;
    the probe asks once, briefly (both settings are read from the environment per request)."""
    return _mlflow_env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(PROBE_TIMEOUT_S))


@contextlib.contextmanager
def _mlflow_env(**values: str) -> Iterator[None]:
    """MLflow settings (environment variables it reads per call) changed within the block."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _within(seconds: float, probe: Callable[[], Any], shown: str) -> None:
    """Run ``probe`` in a daemon thread; an error, or no answer in ``seconds``, is a UserError."""
    failure: list[BaseException] = []

    def attempt() -> None:
        try:
            probe()
        except BaseException as err:  # reported by the caller's thread
            failure.append(err)

    quiet = logging.getLogger("mlflow")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # MLflow's retry warnings print a traceback each
    try:
        thread = threading.Thread(target=attempt, name="harness-store-probe", daemon=True)
        thread.start()
        thread.join(seconds)
    finally:
        quiet.setLevel(level)
    if thread.is_alive():
        raise UserError(f"tracking store {shown}: no answer within {seconds:.0f} s (is the server up, the address right?)")
    if failure:
        raise UserError(f"tracking store {shown}: {_first_line(failure[0])}") from None


def _first_line(err: BaseException, limit: int = 240) -> str:
    """The cause of an error in one line: the innermost exception of its chain (a refused
    connection, a missing driver) when that has a message of its own."""
    root = err
    while (root.__cause__ or root.__context__) is not None:
        root = root.__cause__ or root.__context__
    if isinstance(root, ModuleNotFoundError):
        text = f"its driver is not installed ({root})"
    elif isinstance(root, OSError) and root.strerror:
        text = root.strerror
    else:
        text = str(root).strip() or str(err).strip()
    lines = text.splitlines()
    line = lines[0] if lines else type(err).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


@dataclass(frozen=True)
class RunKey:
    """What identifies a tracked stage run: one stage (its content hash) of one (arm, seed) of a
    study. ``arm`` None: any arm (a stage shared by several arms); ``seed`` None: any seed."""

    study: str
    arm: str | None
    seed: int | None
    stage: str  # pretrain | finetune | eval (core.stages)
    config_hash: str

    def describe(self) -> str:
        arm = f"arm '{self.arm}'" if self.arm is not None else "shared stage"
        return f"{self.stage} run of {arm} seed {self.seed} in study {self.study}"


class Tracker:
    """The harness's view of one tracking store.

    Args:
        uri: the tracking URI (``sqlite:///...``, ``http://...``, ...).
        provenance: what :func:`provenance` returns, when the caller already has it (workers
            receive the parent's); computed on the first :meth:`start_run` otherwise.
    """

    def __init__(self, uri: str, provenance: Mapping[str, Any] | None = None):
        self.uri = uri
        self._client = MlflowClient(tracking_uri=uri)
        self._provenance = provenance
        self._experiments: dict[str, str] = {}

    # ------------------------------------------------------------------------------- runs
    def study_run(self, study: str, description: str = "", stage: str = names.STAGE_STUDY) -> str:
        """The study's parent run, created on the first run of the study and reused (set
        RUNNING again) on every re-run.

        Args:
            study: the study name (the experiment, created if missing).
            description: shown as the run's description.
            stage: the parent's ``harness.stage``: ``study``, or ``sweep`` for a sweep's parent.
        """
        experiment = self._experiment(study, create=True)
        found = next(self._search(experiment, f"tags.`{names.TAG_STAGE}` = {_quote(stage)}", order="asc"), None)
        tags = {names.TAG_STUDY: study, names.TAG_STAGE: stage, MLFLOW_RUN_NOTE: description}
        if found is None:
            return self._client.create_run(experiment, tags=_tag_values(tags), run_name=study).info.run_id
        run_id = found.info.run_id
        self._client.update_run(run_id, status="RUNNING")
        self._log(run_id, tags=tags)
        return run_id

    def claim_run(
        self,
        key: RunKey,
        parent_run_id: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        *,
        label: str | None = None,
        pretrain_run_id: str | None = None,
        retry_failed: bool = False,
    ) -> Claim:
        """Open the run of one stage of one (arm, seed) for this process, unless the store says
        the work is done, failed, or owned by a live process (:func:`harness.tracking.lease.decide`).

        A KILLED run, or a RUNNING one whose owner is dead, is resumed. An owned run carries this
        process's owner tag and is kept alive by its heartbeat until :meth:`end_run`. Two
        processes opening the same key at once: each creates its run, then looks again; one that
        sees a rival FINISHED or alive deletes its own run and steps back, so at most one keeps
        its run (both may step back: they try again after a random pause).

        Args:
            key: the run's key (``arm`` None: a shared stage, whichever arms ran it).
            parent_run_id: the study's parent run (:meth:`study_run`).
            params: the flattened resolved config; values longer than MLflow's limit are
                truncated (the full config is the ``config.yaml`` artifact). A resumed run keeps
                the values it has: they agree on every hashed field.
            tags: extra tags (they override the standard ones, e.g. the worker's device).
            label: the ``harness.arm`` tag; default ``key.arm`` (a shared stage's label says how
                many arms of the current plan share it, not what it computed).
            pretrain_run_id: the pre-training's run, on finetune runs.
            retry_failed: a key whose last attempt FAILED gets a new run (else: ``failed``).
        """
        arm = label if label is not None else key.arm
        experiment = self._experiment(key.study, create=True)
        me = lease.this_process()
        origin = self._origin()
        all_tags = {
            names.TAG_STUDY: key.study,
            names.TAG_ARM: arm,
            names.TAG_SEED: str(key.seed),
            names.TAG_STAGE: key.stage,
            names.TAG_CONFIG_HASH: key.config_hash,
            names.TAG_PARENT_RUN_ID: parent_run_id,
            **origin["tags"],
            **({names.TAG_PRETRAIN_RUN_ID: pretrain_run_id} if pretrain_run_id else {}),
            **(tags or {}),
        }
        values = {key: _param_value(value) for key, value in (params or {}).items()}
        for _ in range(CLAIM_ATTEMPTS):
            decision = lease.decide(self._runs_of(key), time.time(), me, retry_failed)
            if decision.kind in ("finished", "failed", "busy"):
                return Claim(decision.kind, decision.run.run_id, decision.owner)
            owned = {names.TAG_OWNER: me.tag(), names.TAG_HEARTBEAT: f"{time.time():.0f}"}
            if decision.kind == "resume":
                run_id = decision.run.run_id
                # Fischer's rule: write our name, wait, read it back; the last writer owns the run
                self._log(run_id, tags=owned)
                self._client.update_run(run_id, status="RUNNING")
                time.sleep(lease.SETTLE_S)
                current = self._client.get_run(run_id)
                if current.data.tags.get(names.TAG_OWNER) != me.tag():
                    return Claim("busy", run_id, lease.parse_owner(current.data.tags.get(names.TAG_OWNER)))
                self._log(run_id, tags=all_tags)
                values = {key: value for key, value in values.items() if key not in current.data.params}
            else:
                run_name = f"{arm} seed={key.seed} {key.stage}"
                run_id = self._client.create_run(experiment, tags=_tag_values({**all_tags, **owned}), run_name=run_name).info.run_id
                rivals = [r for r in self._runs_of(key) if r.run_id != run_id]
                rival = lease.decide(rivals, time.time(), me, retry_failed=True)
                if rival.kind in ("finished", "busy"):
                    self._client.delete_run(run_id)
                    if rival.kind == "finished":
                        return Claim("finished", rival.run.run_id)
                    time.sleep(random.uniform(0.2, 1.5))
                    continue
            self._log(run_id, params=values)
            if origin["diff"]:
                self._client.log_text(run_id, origin["diff"], names.ARTIFACT_GIT_DIFF)
            self._heartbeat().add(run_id, me.token)
            return Claim("owned", run_id, me)
        return Claim("busy", None, None)

    def start_run(self, key: RunKey, *args: Any, **kwargs: Any) -> str:
        """:meth:`claim_run` (same arguments; a FAILED run is always retried) that must succeed:
        a new run, a retry of a FAILED one, or the resumed run of a dead process; returns its id.

        Raises:
            UserError: the key has a FINISHED run, or a live process owns it.
        """
        claim = self.claim_run(key, *args, **{**kwargs, "retry_failed": True})
        if claim.kind != "owned":
            by = f" (owned by {claim.owner.describe()})" if claim.owner is not None else ""
            raise UserError(f"the {key.describe()} is {claim.kind}{by}")
        return claim.run_id

    def end_owned_runs(self, status: RunStatus = "KILLED") -> list[str]:
        """Close every run this process owns in this store (an interrupted process, on its way
        out); returns their ids.

        Args:
            status: what to close them as.
        """
        owned = self._heartbeat().owned()
        for run_id in owned:
            self.end_run(run_id, status)
        return owned

    def lost(self, run_id: str) -> bool:
        """Whether another process took over a run this process owns (its heartbeat lapsed).

        Args:
            run_id: a run this process claimed.
        """
        return self._heartbeat().lost(run_id)

    def find_run(self, key: RunKey, status: RunStatus = "FINISHED") -> str | None:
        """The latest run of the key with this status, or None.

        Args:
            key: the run's key (``arm`` / ``seed`` None: any).
            status: the run status to look for (FINISHED: work that a re-run skips).
        """
        return self._find(key, (status,))

    def stage_runs(self, study: str) -> list[lease.RunView]:
        """Every stage run of a study (not its parent), newest first; [] for an unknown study."""
        experiment = self._experiment(study, create=False)
        if experiment is None:
            return []
        return [
            lease.RunView(run.info.run_id, run.info.status, run.data.tags, run.info.start_time)
            for run in self._search(experiment, "")
            if run.data.tags.get(names.TAG_STAGE) not in (names.STAGE_STUDY, names.STAGE_SWEEP)
        ]

    def reap_unfinished(self, study: str, status: RunStatus = "KILLED") -> list[str]:
        """Mark the study's stage runs left RUNNING by dead processes as ``status``; returns their
        ids. Runs whose owner is alive, in this workdir or another, are left alone.

        Those still in the plan are resumed by :meth:`claim_run`; the others stay KILLED instead
        of RUNNING forever. The parent run is left alone (:meth:`study_run` reopens it).

        Args:
            study: the study name.
            status: what to mark them (KILLED, or FAILED).
        """
        experiment = self._experiment(study, create=False)
        if experiment is None:
            return []
        me, now = lease.this_process(), time.time()
        orphans = [
            run.info.run_id
            for run in self._search(experiment, "attributes.status = 'RUNNING'")
            if run.data.tags.get(names.TAG_STAGE) not in (names.STAGE_STUDY, names.STAGE_SWEEP)
            and not lease.owner_alive(run.data.tags, now, me)
        ]
        for run_id in orphans:
            self._client.set_terminated(run_id, status=status)
        return orphans

    def end_run(self, run_id: str, status: RunStatus = "FINISHED") -> None:
        """Close a run.

        Args:
            run_id: the run.
            status: FINISHED, FAILED or KILLED.
        """
        self._heartbeat().remove(run_id)
        self._client.set_terminated(run_id, status=status)

    def mark_scheduled(self, run_id: str) -> None:
        """Mark a study's parent run SCHEDULED: its stages wait in a cluster's queue (MLflow's
        own status for that); the run that collects them closes it."""
        self._client.update_run(run_id, status="SCHEDULED")

    def add_holder(self, run_id: str, workdir: str | os.PathLike) -> None:
        """Record that ``workdir`` on this host holds the run's stage outputs (``harness.holders``).

        Args:
            run_id: the stage's run.
            workdir: the harness working directory whose ``stages/<hash>/`` has them.
        """
        holder = {"host": socket.gethostname(), "workdir": str(Path(workdir).resolve())}
        holders = _holders(self._client.get_run(run_id).data.tags)
        if holder not in holders:
            self._log(run_id, tags={names.TAG_HOLDERS: json.dumps([*holders, holder])})

    def log_stage_checkpoint(self, run_id: str, files: Sequence[Path]) -> None:
        """Copy a stage's checkpoint files into the run's ``stage/`` artifacts, so that a workdir
        without the stage (another machine sharing only this store) can fetch it.

        Args:
            run_id: the stage's run.
            files: the files (``best.safetensors``, ``best.json``, ``record.json``).
        """
        for path in files:
            self._client.log_artifact(run_id, str(path), names.ARTIFACT_STAGE)
        self._log(run_id, tags={names.TAG_CHECKPOINT: names.ARTIFACT_STAGE})

    def fetch_stage_checkpoint(self, run_id: str, dest: Path) -> list[Path] | None:
        """Download a run's logged stage checkpoint into ``dest``; None when none was logged.

        Args:
            run_id: the stage's run.
            dest: an existing folder.
        """
        folder = self._client.get_run(run_id).data.tags.get(names.TAG_CHECKPOINT)
        if folder is None:
            return None
        with tempfile.TemporaryDirectory(dir=dest) as tmp, _mlflow_env(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"):
            fetched = Path(self._client.download_artifacts(run_id, folder, tmp))
            paths = []
            for path in sorted(fetched.iterdir()):
                os.replace(path, dest / path.name)
                paths.append(dest / path.name)
        return paths

    # ---------------------------------------------------------------------------- logging
    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        """Log metrics at a step (the epoch). Logging a key again at the same step, as a
        resumed run may, adds a value with a later timestamp; readers take the latest.

        Args:
            run_id: the run.
            metrics: ``{name: value}`` with names from :mod:`harness.tracking.names`.
            step: the step (epoch).
        """
        now = int(time.time() * 1000)
        self._log(run_id, metrics=[Metric(key, float(value), now, step) for key, value in metrics.items()])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) tags on a run.

        Args:
            run_id: the run.
            tags: ``{name: value}``; values are stored as strings.
        """
        self._log(run_id, tags=tags)

    def final_metrics(self, run_id: str) -> dict[str, float]:
        """Each metric's latest value in a run (the highest step; the newest at that step).

        Args:
            run_id: the run.
        """
        return dict(self._client.get_run(run_id).data.metrics)

    def metric_history(self, run_id: str, prefix: str) -> list[dict[str, float]]:
        """The run's per-epoch metrics whose names start with ``prefix`` (``"val/"``): one
        ``{name: value}`` per logged step, in step order (what a stage's record holds as history).

        Args:
            run_id: the run.
            prefix: the names' common start.
        """
        by_step: dict[int, dict[str, float]] = {}
        for key in self._client.get_run(run_id).data.metrics:
            if key.startswith(prefix):
                for metric in self._client.get_metric_history(run_id, key):
                    by_step.setdefault(metric.step, {})[key] = metric.value
        return [by_step[step] for step in sorted(by_step)]

    def selected_validation(self, run_id: str, select_metric: str) -> tuple[list[dict[str, float]], dict[str, float]]:
        """A training run's validation metrics per epoch, and those of the epoch its checkpoint was
        selected at: the first best ``val/<select_metric>``, as the trainer picks ({} without any).

        Args:
            run_id: the run.
            select_metric: ``eval.select_metric`` of its stage.
        """
        history = self.metric_history(run_id, names.VAL_PREFIX)
        key = names.val_metric(select_metric)
        scored = [epoch for epoch in history if key in epoch]
        return history, (max(scored, key=lambda epoch: epoch[key]) if scored else {})  # max: the first of equals

    def logged_steps(self, run_id: str, key: str) -> set[int]:
        """The steps at which ``key`` was logged (what a resumed run still lacks).

        Args:
            run_id: the run.
            key: the metric's name.
        """
        return {metric.step for metric in self._client.get_metric_history(run_id, key)}

    def log_artifact_text(self, run_id: str, name: str, text: str) -> None:
        """Store ``text`` as the artifact file ``name`` (e.g. ``names.ARTIFACT_TRACEBACK``).

        Args:
            run_id: the run.
            name: the artifact's path inside the run.
            text: its content.
        """
        self._client.log_text(run_id, text, name)

    def log_artifact_file(self, run_id: str, path: str | os.PathLike, artifact_dir: str | None = None) -> None:
        """Copy a local file into the run's artifacts.

        Args:
            run_id: the run.
            path: the local file.
            artifact_dir: a folder inside the run's artifacts; the top level when None.
        """
        self._client.log_artifact(run_id, str(path), artifact_dir)

    # -------------------------------------------------------------------------- internals
    def _experiment(self, study: str, create: bool) -> str | None:
        if study in self._experiments:
            return self._experiments[study]
        experiment = self._client.get_experiment_by_name(study)
        if experiment is not None and experiment.lifecycle_stage == "deleted":
            raise UserError(
                f"the MLflow experiment '{study}' was deleted; restore it (mlflow experiments restore)"
                f" or remove it for good (mlflow gc) in {self.uri}"
            )
        if experiment is None and not create:
            return None
        if experiment is None:
            try:
                experiment_id = self._client.create_experiment(study, artifact_location=_artifact_root(self.uri))
            except MlflowException as err:  # another process created it first
                if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
                experiment_id = self._client.get_experiment_by_name(study).experiment_id
        else:
            experiment_id = experiment.experiment_id
        self._experiments[study] = experiment_id
        return experiment_id

    def _find(self, key: RunKey, statuses: tuple[str, ...]) -> str | None:
        return next((run.run_id for run in self._runs_of(key) if run.status in statuses), None)

    def _runs_of(self, key: RunKey) -> list[lease.RunView]:
        """A run key's runs (deleted ones excluded), newest first."""
        experiment = self._experiment(key.study, create=False)
        if experiment is None:
            return []
        query = (
            f"tags.`{names.TAG_STAGE}` = {_quote(key.stage)} and tags.`{names.TAG_CONFIG_HASH}` = {_quote(key.config_hash)}"
        )
        return [
            lease.RunView(run.info.run_id, run.info.status, run.data.tags, run.info.start_time)
            for run in self._search(experiment, query)
            if (key.arm is None or run.data.tags.get(names.TAG_ARM) == key.arm)
            and (key.seed is None or run.data.tags.get(names.TAG_SEED) == str(key.seed))
        ]

    def _heartbeat(self) -> lease.Heartbeat:
        return _heartbeat_for(self.uri)

    def _search(self, experiment: str, query: str, order: str = "desc") -> Iterator[Any]:
        return search_runs(self._client, experiment, query, order)

    def _log(
        self,
        run_id: str,
        metrics: Sequence[Metric] = (),
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        """log_batch in chunks within MLflow's per-request limits."""
        params = [Param(k, v) for k, v in (params or {}).items()]
        tags = [RunTag(k, v) for k, v in _tag_values(tags or {}).items()]
        for i in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(run_id, params=params[i : i + MAX_PARAMS_TAGS_PER_BATCH])
        for i in range(0, len(tags), MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(run_id, tags=tags[i : i + MAX_PARAMS_TAGS_PER_BATCH])
        for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self._client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS_PER_BATCH])

    def _origin(self) -> dict[str, Any]:
        """Provenance as run tags, plus the diff to store when the work tree is dirty."""
        if self._provenance is None:
            self._provenance = provenance()
        info = self._provenance
        dirty = info["git_dirty"]
        tags = {
            names.TAG_GIT_COMMIT: info["git_commit"] or "unknown",
            names.TAG_GIT_DIRTY: "unknown" if dirty is None else str(dirty).lower(),
            names.TAG_CUDA: info["cuda"] or "none",
            names.TAG_DEVICE: info["device"],
            **{names.TAG_VERSION.format(package): version for package, version in info["versions"].items()},
        }
        return {"tags": tags, "diff": info["git_diff"] if dirty else ""}


@dataclass(frozen=True)
class Claim:
    """What :meth:`Tracker.claim_run` found: ``owned`` (this process runs it: ``run_id``),
    ``finished`` (the FINISHED run), ``failed`` (the FAILED run; no retry asked) or ``busy``
    (``owner`` runs it; ``run_id`` None when rivals kept stepping back)."""

    kind: Literal["owned", "finished", "failed", "busy"]
    run_id: str | None
    owner: lease.Owner | None = None


_HEARTBEATS: dict[tuple[int, str], lease.Heartbeat] = {}
_HEARTBEATS_LOCK = threading.Lock()


def _heartbeat_for(uri: str) -> lease.Heartbeat:
    """This process's heartbeat thread for a store (one per process and URI, started lazily)."""
    key = (os.getpid(), uri)
    with _HEARTBEATS_LOCK:
        if key not in _HEARTBEATS:
            client = MlflowClient(tracking_uri=uri)

            def beat(run_id: str) -> str | None:
                client.set_tag(run_id, names.TAG_HEARTBEAT, f"{time.time():.0f}")
                return client.get_run(run_id).data.tags.get(names.TAG_OWNER)

            _HEARTBEATS[key] = lease.Heartbeat(beat)
        return _HEARTBEATS[key]


def _holders(tags: Mapping[str, str]) -> list[dict[str, str]]:
    try:
        holders = json.loads(tags.get(names.TAG_HOLDERS, "[]"))
    except ValueError:
        return []
    return holders if isinstance(holders, list) else []


# ---------------------------------------------------------------------------------- helpers
def search_runs(client: MlflowClient, experiment_id: str | Sequence[str], query: str, order: str = "desc") -> Iterator[Any]:
    """Every run of an experiment (or of several) matching ``query``, by start time (``order``),
    paging through MLflow's results (at most :data:`PAGE_SIZE` runs per request).

    Args:
        client: the store's client.
        experiment_id: the experiment, or a list of them.
        query: an MLflow filter string ("" for all).
        order: ``desc`` (newest first) or ``asc``.
    """
    ids = [experiment_id] if isinstance(experiment_id, str) else list(experiment_id)
    if not ids:
        return
    token = None
    while True:
        page = client.search_runs(
            ids, query, max_results=PAGE_SIZE, order_by=[f"attributes.start_time {order}"], page_token=token
        )
        yield from page
        token = page.token
        if not token:
            return


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other schemes and in-memory SQLite)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri[len(prefix) :] in ("", ":memory:"):
        return None
    return Path(uri[len(prefix) :])


def _artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite store go beside the database (MLflow's default is ./mlruns under
    whatever folder the process runs in); a server decides for itself (None)."""
    db = sqlite_path(uri)
    return (db.resolve().parent / "mlartifacts").as_uri() if db is not None else None


def _param_value(value: Any) -> str:
    """A config value as an MLflow param: strings as they are, the rest as JSON (true, null,
    [9, 15]: readable back with ``--set``), cut to MLflow's length limit."""
    return _clip(value if isinstance(value, str) else json.dumps(value, sort_keys=True), MAX_PARAM_VAL_LENGTH)


def _tag_values(tags: Mapping[str, Any]) -> dict[str, str]:
    return {key: _clip(str(value), MAX_TAG_VAL_LENGTH) for key, value in tags.items()}


def _clip(text: str, limit: int) -> str:
    """MLflow refuses longer values; the full text lives in an artifact (config, study file)."""
    return text if len(text) <= limit else text[: limit - len(TRUNCATED)] + TRUNCATED


def _quote(value: str) -> str:
    """A value for an MLflow filter string (which has no escape for quotes)."""
    if "'" in value:
        raise ValueError(f"cannot search MLflow for a value with a quote: {value!r}")
    return f"'{value}'"
