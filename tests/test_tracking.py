"""The tracking store's contract, run on every backend (SQLite here; add a class per backend).

Each backend class supplies a class-scoped ``uri`` fixture to a store that ``init_store`` has
prepared; the tests share that store and keep apart by using one study name each.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from harness.tracking import RunKey, Tracker, default_tracking_uri, init_store, lease, names, provenance, store

ROOT = Path(__file__).resolve().parents[1]
# MLflow's own SQLAlchemy models trigger this on every new store; it is not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
# A fixed provenance keeps the contract tests free of git and torch; provenance() is tested alone.
ORIGIN = {
    "git_commit": "0123abc",
    "git_dirty": True,
    "git_diff": "--- a/x\n+++ b/x\n",
    "versions": {"python": "3", "torch": "2", "timm": "1", "transformers": "4", "mlflow": "3"},
    "cuda": None,
    "device": "cpu",
}


@pytest.fixture
def study(request: pytest.FixtureRequest) -> str:
    """A study name of its own for each test (the store is shared)."""
    return request.node.name.replace("[", "-").replace("]", "")


class TrackerContract:
    """Behaviour every tracking backend must show."""

    @pytest.fixture
    def tracker(self, uri: str) -> Tracker:
        return Tracker(uri, provenance=ORIGIN)

    @pytest.fixture
    def client(self, uri: str) -> MlflowClient:
        return MlflowClient(tracking_uri=uri)

    def runs(self, client: MlflowClient, study: str) -> list:
        experiment = client.get_experiment_by_name(study)
        return client.search_runs([experiment.experiment_id]) if experiment else []

    def test_study_run_is_reused_when_the_study_runs_again(self, tracker, client, study) -> None:
        parent = tracker.study_run(study, "what it studies")
        tracker.end_run(parent)
        assert tracker.study_run(study, "what it studies") == parent
        (run,) = self.runs(client, study)
        assert run.info.status == "RUNNING"  # reopened for the re-run
        assert run.data.tags[names.TAG_STAGE] == "study" and run.data.tags[names.TAG_STUDY] == study
        assert run.data.tags["mlflow.note.content"] == "what it studies"

    def test_stage_runs_nest_under_the_study_with_tags_and_config_params(self, tracker, client, study) -> None:
        parent = tracker.study_run(study)
        pretrain = tracker.start_run(RunKey(study, "depth=0", 0, "pretrain", "p1"), parent, {"model.embed_dim": 128})
        finetune = tracker.start_run(
            RunKey(study, "depth=4", 0, "finetune", "f1"),
            parent,
            {
                "model.decoder.depth": 4,
                "finetune.optim.decay_epochs": [9, 15],
                "data.annotations": None,
                "runtime.device": "cpu",
            },
            {"custom": "x"},
            pretrain_run_id=pretrain,
        )
        run = client.get_run(finetune)
        assert run.data.tags[names.TAG_PARENT_RUN_ID] == parent
        expected = {
            names.TAG_STUDY: study,
            names.TAG_ARM: "depth=4",
            names.TAG_SEED: "0",
            names.TAG_STAGE: "finetune",
            names.TAG_CONFIG_HASH: "f1",
            names.TAG_GIT_COMMIT: "0123abc",
            names.TAG_GIT_DIRTY: "true",
            names.TAG_PRETRAIN_RUN_ID: pretrain,
            "custom": "x",
        }
        assert expected.items() <= run.data.tags.items()
        assert run.data.params == {
            "model.decoder.depth": "4",
            "finetune.optim.decay_epochs": "[9, 15]",
            "data.annotations": "null",
            "runtime.device": "cpu",
        }
        assert client.get_run(pretrain).data.tags[names.TAG_PARENT_RUN_ID] == parent
        assert names.TAG_PRETRAIN_RUN_ID not in client.get_run(pretrain).data.tags

    def test_values_longer_than_mlflow_allows_are_truncated(self, tracker, client, study) -> None:
        parent = tracker.study_run(study, "d" * 9000)
        run_id = tracker.start_run(RunKey(study, "a", 0, "finetune", "h"), parent, {"model.text.config_overrides": "x" * 9000})
        value = client.get_run(run_id).data.params["model.text.config_overrides"]
        assert 1000 < len(value) <= 6000 and value.endswith("[truncated]")
        note = client.get_run(parent).data.tags["mlflow.note.content"]
        assert 6000 < len(note) <= 8000 and note.endswith("[truncated]")

    def test_find_run_finds_only_finished_runs_with_the_same_hash(self, tracker, study) -> None:
        parent = tracker.study_run(study)
        assert tracker.find_run(RunKey(study, "a", 0, "finetune", "h1")) is None
        run_id = tracker.start_run(RunKey(study, "a", 0, "finetune", "h1"), parent)
        assert tracker.find_run(RunKey(study, "a", 0, "finetune", "h1")) is None  # still running
        assert tracker.find_run(RunKey(study, "a", 0, "finetune", "h1"), status="RUNNING") == run_id
        tracker.end_run(run_id)
        assert tracker.find_run(RunKey(study, "a", 0, "finetune", "h1")) == run_id
        assert tracker.find_run(RunKey(study, "a", 0, "finetune", "h2")) is None
        assert tracker.find_run(RunKey(study, "b", 0, "finetune", "h1")) is None
        assert tracker.find_run(RunKey(study, "a", 1, "finetune", "h1")) is None
        assert tracker.find_run(RunKey(study, "a", 0, "pretrain", "h1")) is None
        assert tracker.find_run(RunKey(study, None, None, "finetune", "h1")) == run_id  # a shared stage

    def test_find_run_in_a_study_never_run_finds_nothing(self, tracker, client, study) -> None:
        assert tracker.find_run(RunKey(study, "a", 0, "finetune", "h")) is None
        assert tracker.reap_unfinished(study) == []
        assert client.get_experiment_by_name(study) is None

    def test_killed_process_resumes_into_its_run_leaving_one_finished_run(self, uri, client, study) -> None:
        parent = Tracker(uri, provenance=ORIGIN).study_run(study)
        killed = textwrap.dedent(
            f"""
            import json, os
            from harness.tracking import RunKey, Tracker, names
            tracker = Tracker({uri!r}, provenance={ORIGIN!r})
            run_id = tracker.start_run(RunKey({study!r}, "a", 0, "finetune", "h"), {parent!r}, {{"pretrain.epochs": 2}})
            tracker.log_metrics(run_id, {{names.TRAIN_LOSS: 3.0}}, step=0)
            other = tracker.start_run(RunKey({study!r}, "gone", 0, "finetune", "g"), {parent!r})  # an arm since removed
            print(json.dumps([run_id, other]), flush=True)
            os._exit(0)  # as kill -9 would: no run is closed
            """
        )
        done = subprocess.run([sys.executable, "-c", killed], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        run_id, other = json.loads(done.stdout.splitlines()[-1])

        again = Tracker(uri, provenance=ORIGIN)  # the re-run: the owner's pid is gone
        assert again.study_run(study) == parent
        assert sorted(again.reap_unfinished(study)) == sorted([run_id, other])
        assert again.find_run(RunKey(study, "a", 0, "finetune", "h")) is None
        params = {"pretrain.epochs": 2, "runtime.device": "cuda"}  # a result-neutral field changed
        assert again.start_run(RunKey(study, "a", 0, "finetune", "h"), parent, params) == run_id
        again.log_metrics(run_id, {names.TRAIN_LOSS: 2.0}, step=1)
        again.end_run(run_id)

        children = [r for r in self.runs(client, study) if r.data.tags[names.TAG_STAGE] != "study"]
        statuses = {r.info.run_id: r.info.status for r in children}
        assert statuses == {run_id: "FINISHED", other: "KILLED"}  # one run each, none RUNNING
        history = client.get_metric_history(run_id, names.TRAIN_LOSS)
        assert sorted((m.step, m.value) for m in history) == [(0, 3.0), (1, 2.0)]
        assert client.get_run(run_id).data.params == {"pretrain.epochs": "2", "runtime.device": "cuda"}
        assert client.get_run(parent).info.status == "RUNNING"  # reaping leaves the parent alone

    def test_a_run_whose_owner_is_alive_is_never_reaped_or_taken_over(self, uri, study) -> None:
        tracker = Tracker(uri, provenance=ORIGIN)
        parent = tracker.study_run(study)
        holder = textwrap.dedent(
            f"""
            import sys
            from harness.tracking import RunKey, Tracker
            tracker = Tracker({uri!r}, provenance={ORIGIN!r})
            print(tracker.start_run(RunKey({study!r}, "a", 0, "finetune", "h"), {parent!r}), flush=True)
            sys.stdin.read()  # alive until the test closes stdin or kills it
            """
        )
        proc = subprocess.Popen([sys.executable, "-c", holder], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            run_id = proc.stdout.readline().strip()
            assert run_id, "the holder process did not open its run"
            assert tracker.reap_unfinished(study) == []  # another workdir's live run is not an orphan
            claim = tracker.claim_run(RunKey(study, "a", 0, "finetune", "h"), parent)
            assert (claim.kind, claim.run_id, claim.owner.pid) == ("busy", run_id, proc.pid)
        finally:
            proc.kill()
            proc.wait()
        claim = tracker.claim_run(RunKey(study, "a", 0, "finetune", "h"), parent)  # its owner is dead now
        assert (claim.kind, claim.run_id) == ("owned", run_id)
        tracker.end_run(run_id)
        assert tracker.claim_run(RunKey(study, "a", 0, "finetune", "h"), parent).kind == "finished"

    def test_another_hosts_run_is_taken_over_only_when_its_heartbeat_is_stale(self, uri, client, study) -> None:
        tracker = Tracker(uri, provenance=ORIGIN)
        parent = tracker.study_run(study)
        run_id = tracker.start_run(RunKey(study, "a", 0, "finetune", "h"), parent)
        tracker.end_run(run_id, "KILLED")  # stop our heartbeat; then make it another machine's run
        client.update_run(run_id, status="RUNNING")
        elsewhere = lease.Owner("elsewhere", 1, "another-pid-namespace", "t0")
        for age, expected in ((0, "busy"), (2 * lease.LEASE_S, "owned")):
            beat = f"{time.time() - age:.0f}"
            tracker.set_tags(run_id, {names.TAG_OWNER: elsewhere.tag(), names.TAG_HEARTBEAT: beat})
            claim = tracker.claim_run(RunKey(study, "a", 0, "finetune", "h"), parent)
            assert (claim.kind, claim.run_id) == (expected, run_id), age
        assert lease.parse_owner(client.get_run(run_id).data.tags[names.TAG_OWNER]) == lease.this_process()
        tracker.end_run(run_id)

    def test_processes_opening_one_run_at_once_leave_one_owner_and_one_run(self, uri, client, study) -> None:
        parent = Tracker(uri, provenance=ORIGIN).study_run(study)
        start = time.time() + 8  # after every process has imported mlflow
        contender = textwrap.dedent(
            f"""
            import time
            from harness.tracking import RunKey, Tracker
            tracker = Tracker({uri!r}, provenance={ORIGIN!r})
            tracker.study_run({study!r})
            time.sleep(max(0.0, {start!r} - time.time()))
            claim = tracker.claim_run(RunKey({study!r}, "a", 0, "finetune", "h"), {parent!r})
            print(claim.kind, flush=True)
            time.sleep(4)  # keep an owned run alive while the others look
            if claim.kind == "owned":
                tracker.end_run(claim.run_id)
            """
        )
        procs = [subprocess.Popen([sys.executable, "-c", contender], cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(3)]
        kinds = sorted(proc.communicate(timeout=180)[0].split()[-1] for proc in procs)
        assert kinds.count("owned") == 1 and set(kinds) <= {"owned", "busy", "finished"}, kinds
        runs = [r for r in self.runs(client, study) if r.data.tags[names.TAG_STAGE] == "finetune"]
        assert [r.info.status for r in runs] == ["FINISHED"]  # the others deleted their rivals

    def test_failed_runs_are_kept_and_a_retry_opens_a_new_run(self, tracker, client, study) -> None:
        parent = tracker.study_run(study)
        failed = tracker.start_run(RunKey(study, "a", 0, "finetune", "h"), parent)
        tracker.log_artifact_text(failed, names.ARTIFACT_TRACEBACK, "Traceback: loss is nan")
        tracker.end_run(failed, "FAILED")
        retry = tracker.start_run(RunKey(study, "a", 0, "finetune", "h"), parent)
        tracker.end_run(retry)
        assert retry != failed
        assert tracker.find_run(RunKey(study, "a", 0, "finetune", "h"), status="FAILED") == failed
        assert tracker.find_run(RunKey(study, "a", 0, "finetune", "h")) == retry
        assert client.get_run(failed).info.status == "FAILED"

    def test_metrics_are_logged_per_step(self, tracker, client, study) -> None:
        run_id = tracker.start_run(RunKey(study, "a", 0, "finetune", "h"), tracker.study_run(study))
        for epoch in range(3):
            values = {names.val_metric("rsum"): 100.0 + epoch, names.LR: 0.1 / (epoch + 1)}
            tracker.log_metrics(run_id, values, step=epoch)
        tracker.log_metrics(run_id, {names.test_metric("rsum"): 111.5}, step=2)
        history = client.get_metric_history(run_id, names.val_metric("rsum"))
        assert sorted((m.step, m.value) for m in history) == [(0, 100.0), (1, 101.0), (2, 102.0)]
        assert client.get_run(run_id).data.metrics[names.test_metric("rsum")] == 111.5

    def test_final_metrics_and_logged_steps_read_back_what_was_logged(self, tracker, study) -> None:
        run_id = tracker.start_run(RunKey(study, "a", 0, "finetune", "h"), tracker.study_run(study))
        assert tracker.final_metrics(run_id) == {} and tracker.logged_steps(run_id, names.TRAIN_LOSS) == set()
        tracker.log_metrics(run_id, {names.TRAIN_LOSS: 2.0}, step=0)
        tracker.log_metrics(run_id, {names.TRAIN_LOSS: 1.0}, step=2)
        assert tracker.logged_steps(run_id, names.TRAIN_LOSS) == {0, 2}
        assert tracker.final_metrics(run_id) == {names.TRAIN_LOSS: 1.0}

    def test_set_tags_overwrites_tags(self, tracker, client, study) -> None:
        parent = tracker.study_run(study)
        tracker.set_tags(parent, {"harness.baseline": "depth=0"})
        tracker.set_tags(parent, {"harness.baseline": "depth=4"})
        assert client.get_run(parent).data.tags["harness.baseline"] == "depth=4"

    def test_artifacts_round_trip_with_the_git_diff_when_dirty(self, tracker, client, study, tmp_path) -> None:
        run_id = tracker.start_run(RunKey(study, "a", 0, "finetune", "h"), tracker.study_run(study))
        tracker.log_artifact_text(run_id, names.ARTIFACT_CONFIG, "model:\n  embed_dim: 128\n")
        ranks = tmp_path / names.ARTIFACT_RANKS
        ranks.write_bytes(b"\x00\x01binary")
        tracker.log_artifact_file(run_id, ranks)
        tracker.log_artifact_file(run_id, ranks, artifact_dir="eval")
        out = Path(client.download_artifacts(run_id, "", str(tmp_path / "out")))
        assert (out / names.ARTIFACT_CONFIG).read_text() == "model:\n  embed_dim: 128\n"
        assert (out / names.ARTIFACT_RANKS).read_bytes() == b"\x00\x01binary"
        assert (out / "eval" / names.ARTIFACT_RANKS).read_bytes() == b"\x00\x01binary"
        assert (out / names.ARTIFACT_GIT_DIFF).read_text() == ORIGIN["git_diff"]

    def test_a_clean_work_tree_logs_no_diff(self, uri, client, study, tmp_path) -> None:
        tracker = Tracker(uri, provenance={**ORIGIN, "git_dirty": False, "git_diff": ""})
        run_id = tracker.start_run(RunKey(study, "a", 0, "finetune", "h"), tracker.study_run(study))
        assert client.get_run(run_id).data.tags[names.TAG_GIT_DIRTY] == "false"
        assert client.list_artifacts(run_id) == []

    def test_init_store_is_idempotent(self, uri, tracker, study) -> None:
        parent = tracker.study_run(study)
        init_store(uri)
        init_store(uri)
        assert Tracker(uri, provenance=ORIGIN).study_run(study) == parent

    def test_two_worker_processes_can_use_the_store_at_once(self, uri, tracker, client, study) -> None:
        parent = tracker.study_run(study)
        worker = textwrap.dedent(
            f"""
            import sys
            from harness.tracking import RunKey, Tracker
            tracker = Tracker({uri!r}, provenance={ORIGIN!r})
            arm = sys.argv[1]
            run_id = tracker.start_run(RunKey({study!r}, arm, 0, "finetune", "h-" + arm), {parent!r}, {{"k": arm}})
            for epoch in range(5):
                tracker.log_metrics(run_id, {{"train/loss": 1.0 / (epoch + 1)}}, step=epoch)
            tracker.end_run(run_id)
            """
        )
        procs = [
            subprocess.Popen([sys.executable, "-c", worker, arm], cwd=ROOT, stderr=subprocess.PIPE, text=True)
            for arm in ("w0", "w1")
        ]
        errors = [proc.communicate(timeout=120)[1] for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0], errors
        for arm in ("w0", "w1"):
            run_id = tracker.find_run(RunKey(study, arm, 0, "finetune", f"h-{arm}"))
            assert run_id is not None
            assert len(client.get_metric_history(run_id, "train/loss")) == 5


class TestSQLiteStore(TrackerContract):
    @pytest.fixture(scope="class")
    @classmethod
    def uri(cls, tmp_path_factory: pytest.TempPathFactory) -> str:
        uri = default_tracking_uri(tmp_path_factory.mktemp("workdir"))
        init_store(uri)
        return uri

    def test_artifacts_live_beside_the_database(self, uri, tracker, client, study) -> None:
        run_id = tracker.start_run(RunKey(study, "a", 0, "finetune", "h"), tracker.study_run(study))
        db = Path(uri.removeprefix("sqlite:///"))
        assert client.get_run(run_id).info.artifact_uri.startswith((db.parent / "mlartifacts").as_uri())


def test_default_tracking_uri_is_a_sqlite_file_in_the_workdir(tmp_path: Path) -> None:
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def journal_mode(db: Path) -> str:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return conn.execute("PRAGMA journal_mode").fetchone()[0]


def test_a_sqlite_store_on_a_local_disk_writes_ahead_and_one_on_a_network_file_system_keeps_its_journal(tmp_path, monkeypatch) -> None:
    kinds = {"local": "ext4", "shared": "nfs4"}
    monkeypatch.setattr(store, "_filesystem_type", lambda folder: kinds[folder.name])
    for name in kinds:
        init_store(default_tracking_uri(tmp_path / name))
    assert journal_mode(tmp_path / "local" / "mlflow.db") == "wal"
    assert journal_mode(tmp_path / "shared" / "mlflow.db") == "delete"
    moved = tmp_path / "moved" / "mlflow.db"  # a store written on a local disk, then moved to a cluster's
    moved.parent.mkdir()
    with contextlib.closing(sqlite3.connect(moved)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
    kinds["moved"] = "lustre"
    init_store(default_tracking_uri(moved.parent))
    assert journal_mode(moved) == "delete"


def test_the_file_system_of_a_path_is_that_of_its_longest_mount_point() -> None:
    mounts = "/dev/root / ext4 rw 0 0\nserver:/home /mnt/lab\\040share nfs4 rw 0 0\ntmpfs /mnt/lab\\040share/tmp tmpfs rw 0 0\n"
    assert store.mount_type("/mnt/lab share/runs", mounts) == "nfs4"
    assert store.mount_type("/mnt/lab share/tmp/x", mounts) == "tmpfs"
    assert store.mount_type("/mnt/labx", mounts) == "ext4"
    assert store.mount_type("/x", "") is None
    assert store.mount_type("/data/x", "a /data ext4 rw 0 0\nb /data nfs rw 0 0\n") == "nfs"  # mounted over: the last


def test_provenance_outside_a_git_work_tree_has_no_git_fields(tmp_path: Path) -> None:
    info = provenance(tmp_path)
    assert (info["git_commit"], info["git_dirty"], info["git_diff"]) == (None, None, "")
    assert set(info["versions"]) == {"python", "torch", "timm", "transformers", "mlflow"}
    assert info["device"]
    json.dumps(info)  # plain data: it travels to worker processes


def test_provenance_of_a_dirty_work_tree_carries_its_diff(tmp_path: Path) -> None:
    def git(*args: str) -> None:
        command = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
        subprocess.run(command, cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-qm", "one")
    clean = provenance(tmp_path)
    assert len(clean["git_commit"]) == 40 and clean["git_dirty"] is False and clean["git_diff"] == ""
    (tmp_path / "a.py").write_text("x = 2\n")
    (tmp_path / "new.py").write_text("")
    dirty = provenance(tmp_path)
    assert dirty["git_dirty"] is True and dirty["git_commit"] == clean["git_commit"]
    assert "+x = 2" in dirty["git_diff"] and "# untracked: new.py" in dirty["git_diff"]
    git("add", "-A")
    git("commit", "-qm", "two")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "bench.json").write_text("{}")  # what the caller writes itself
    assert provenance(tmp_path, ignored=("reports",))["git_dirty"] is False
    assert provenance(tmp_path)["git_dirty"] is True
