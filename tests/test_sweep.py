"""`harness sweep --optuna`: the spec, the queue and liveness rules, pruning through the executor,
and end to end on the tiny setting (workers, resume after kill -9, a killed worker, PostgreSQL)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

from core.errors import UserError
from harness._locks import flock, is_held
from harness.bench.sweep import bench_sweep
from harness.cli import app
from harness.execute import TaskContext, TaskOutcome, TaskStopped, execute_task, plan_tasks
from core.stages import LAST_CHECKPOINT
from harness.plan import DONE, make_plan, stage_dir
from harness.study import ArmSpec, Study, load_study
from harness.sweep import DEFAULT_SPEC, SAMPLERS, load_sweep, run_sweep, suggest
from harness.sweep._trial import trial_study
from harness.sweep import _samplers, _storage, _trial
from harness.tracking import names
from harness.tracking.lineage import provenance

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny.yaml"
runner = CliRunner()
# One fine-tuning epoch more than the tiny setting, so that the median pruner can stop a trial.
TINY_BASE = {"pretrain.epochs": 1, "finetune.epochs": 3}
FINETUNE_SPACE = {
    "finetune.optim.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
    "model.decoder.num_tokens": {"type": "int", "low": 2, "high": 8},
}
pytestmark = [
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
    pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated"),  # MLflow's, not ours
]


def write_spec(tmp_path: Path, name: str = "tiny-sweep", **fields) -> Path:
    spec = {"name": name, "setting": str(TINY), "base": TINY_BASE, "space": FINETUNE_SPACE, "n_trials": 4, **fields}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def journal_study(work: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=_storage.open_storage(None, _storage.sweep_dir(work, name)))


def started_study(work: Path, name: str) -> optuna.Study | None:
    """The sweep's study once the launcher has created it (the journal file comes first)."""
    if not (_storage.sweep_dir(work, name) / _storage.JOURNAL).exists():
        return None
    try:
        return journal_study(work, name)
    except KeyError:
        return None


def trial_runs(uri: str, name: str) -> list:
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    return [r for r in client.search_runs([experiment.experiment_id]) if names.TAG_TRIAL in r.data.tags]


def stage_kinds(work: Path) -> dict[str, str]:
    """Each stage folder that trained: hash -> pretrain | finetune (from its epoch checkpoint)."""
    return {p.parent.name: json.loads(p.read_text())["stage"] for p in work.glob("stages/*/last.json")}


def assert_sweep_reached(study: optuna.Study, n_trials: int) -> list:
    """n_trials that count, distinct, all finished; every other trial is a FAIL a copy replaced."""
    trials = study.get_trials()
    replaced = _storage.superseded(trials)
    counted = [t for t in trials if t.number not in replaced]
    assert len(counted) == n_trials and len({t.number for t in counted}) == n_trials
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in counted), [t.state for t in counted]
    assert all(t.state == TrialState.FAIL for t in trials if t.number in replaced)
    return counted


# ------------------------------------------------------------------------------------- spec
@pytest.mark.parametrize(
    "fields, message",
    [
        ({"space": {"finetune.optim.lrr": {"type": "float", "low": 0.1, "high": 1}}}, "did you mean 'finetune.optim.lr'"),
        ({"space": {"finetune.optim.lr": {"type": "float", "low": 1.0, "high": 0.1}}}, "space.finetune.optim.lr"),
        ({"space": {"model.decoder.placement": {"type": "categorical", "choices": ["prefix", "middle"]}}}, "'middle'"),
        ({"space": {"finetune.optim.lr": {"type": "float", "low": 0.1, "high": 1, "stepp": 0.1}}}, "did you mean 'step'"),
        ({"sampler": "tpee"}, "did you mean 'tpe'"),
        ({"sampler": {"name": "tpe", "args": {"n_startup_trial": 3}}}, "did you mean 'n_startup_trials'"),
        ({"sampler": "grid"}, "grid sampler needs choices or a step"),
        ({"pruner": "medain"}, "did you mean 'median'"),
        ({"objective": {"metric": "test/rsum"}}, "not a validation metric"),
        ({"n_trials": None}, "needs a budget"),
        ({"base": {**TINY_BASE, "runtime.seed": 3}}, "list the seeds under `seeds`"),
        ({"base": {**TINY_BASE, "finetune.optim.lr": 0.1}}, "which `space` searches"),
    ],
)
def test_bad_spec_is_a_one_screen_error_naming_the_key(tmp_path, fields, message):
    path = write_spec(tmp_path, **fields)
    with pytest.raises(UserError) as err:
        load_sweep(path)
    assert message in str(err.value)
    assert len(str(err.value).splitlines()) < 25


def test_default_spec_searches_fine_tuning_only_so_its_trials_share_one_pretraining():
    spec = load_sweep(DEFAULT_SPEC)
    assert spec.n_trials == 12 and spec.sampler.name == "tpe" and spec.pruner.name == "median"
    hashes = set()
    for corner in ("low", "high"):
        values = {key: getattr(param, corner) for key, param in spec.space.items()}
        plan = make_plan(trial_study(spec, corner, values))
        hashes |= {s.hash for s in plan.stages.values() if s.kind == "pretrain"}
    assert len(hashes) == 1


def test_objective_direction_follows_the_metric_unless_given(tmp_path):
    assert load_sweep(write_spec(tmp_path)).objective.direction == "maximize"
    ranks = load_sweep(write_spec(tmp_path, "ranks", objective={"metric": "val/t2i_medr"}))
    assert ranks.objective.direction == "minimize"


def test_space_suggests_each_key_in_its_range_and_type(tmp_path):
    spec = load_sweep(write_spec(tmp_path, space={
        **FINETUNE_SPACE,
        "model.decoder.placement": {"type": "categorical", "choices": ["prefix", "surround"]},
        "finetune.distill.weight": {"type": "float", "low": 0.5, "high": 2.0, "step": 0.5},
    }))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = suggest(study.ask(), spec.distributions())
        assert list(values) == list(spec.space)
        assert 1e-4 <= values["finetune.optim.lr"] <= 3e-3
        assert isinstance(values["model.decoder.num_tokens"], int) and 2 <= values["model.decoder.num_tokens"] <= 8
        assert values["model.decoder.placement"] in ("prefix", "surround")
        assert values["finetune.distill.weight"] in (0.5, 1.0, 1.5, 2.0)


def test_every_sampler_builds_and_the_grid_enumerates_the_space(tmp_path):
    spec = load_sweep(write_spec(tmp_path, space={
        "model.decoder.num_tokens": {"type": "int", "low": 2, "high": 4},
        "model.decoder.placement": {"type": "categorical", "choices": ["prefix", "surround"]},
    }))
    for name in SAMPLERS:
        assert _samplers.make_sampler(name, {}, 0, spec.distributions()) is not None
    assert _samplers.grid_space(spec.distributions()) == {
        "model.decoder.num_tokens": [2, 3, 4], "model.decoder.placement": ["prefix", "surround"],
    }


def test_recorded_sampler_settings_hold_every_default_and_the_optuna_version():
    recorded = _samplers.settings("sampler", "tpe", {"n_startup_trials": 4}, seed=7)
    assert recorded["optuna"] == optuna.__version__ and recorded["class"].endswith("TPESampler")
    assert recorded["settings"]["n_startup_trials"] == 4 and recorded["settings"]["seed"] == 7
    assert "n_ei_candidates" in recorded["settings"] and "constant_liar" in recorded["settings"]
    json.dumps(recorded)  # a tag value


# ---------------------------------------------------------------------------- queue, liveness
def test_queue_keeps_n_counted_trials_when_a_failed_one_is_requeued(tmp_path):
    study = optuna.create_study(storage=_storage.open_storage(None, tmp_path))
    assert _storage.fill_slots(study, 3) == 3
    first = _storage.pop_waiting(study)
    study.tell(study._storage.get_trial_number_from_id(first), state=TrialState.FAIL)
    assert _storage.fill_slots(study, 3) == 0  # the failed trial counts: no slot added
    assert _storage.requeue_failed(study) == [0]
    assert _storage.fill_slots(study, 3) == 0  # the copy replaces it
    tally = _storage.counts(study)
    assert (tally.waiting, tally.failed, tally.requeued, tally.counted) == (3, 0, 1, 3)
    assert _storage.requeue_failed(study) == []  # once only


def test_journal_reaper_requeues_a_dead_workers_trial_but_not_a_live_one(tmp_path, monkeypatch):
    monkeypatch.setattr(_storage, "MIN_AGE_S", 0.0)
    study = optuna.create_study(storage=_storage.open_storage(None, tmp_path))
    _storage.fill_slots(study, 2)
    live, dead = _storage.pop_waiting(study), _storage.pop_waiting(study)
    for trial_id in (live, dead):
        optuna.Trial(study, trial_id).suggest_float("x", 0.0, 1.0)
    dead_number = study._storage.get_trial_number_from_id(dead)
    lock = tmp_path / "live" / f"trial-{dead_number}.lock"
    lock.parent.mkdir()
    lock.write_text("12345")  # left by a killed worker: the file is there, nobody holds it
    with _storage.claim(study, live, study._storage.get_trial_number_from_id(live), tmp_path):
        assert _storage.reap(study, tmp_path) == [dead_number]
    trials = study.get_trials()
    assert trials[dead_number].state == TrialState.FAIL and "worker died" in trials[dead_number].user_attrs["fail_reason"]
    (copy,) = [t for t in trials if t.state == TrialState.WAITING]
    assert copy.user_attrs[_storage.REQUEUE_OF] == dead_number and copy.user_attrs[_storage.ROOT] == dead_number
    assert copy.system_attrs["fixed_params"] == trials[dead_number].params
    assert _storage.reap(study, tmp_path) == []  # the live trial is left alone, the dead one reaped once


def test_a_failed_task_fails_its_trial_with_the_reason_and_traceback_and_a_stopped_one_prunes_it():
    study = optuna.create_study()
    failed = TaskOutcome(task=None, status="FAILED", run_id="r1", error="NonFiniteLoss: loss became non-finite",
                         traceback="Traceback (most recent call last):\n  ...\nNonFiniteLoss: loss")
    for outcome, state in ((failed, TrialState.FAIL), (TaskOutcome(None, "STOPPED", "r2", error="pruned after epoch 1"), TrialState.PRUNED)):
        trial = study.ask()
        trial.report(1.0, 0)
        result = _trial._result(outcome, None, None, "unused", "rsum", "rsum")
        assert result.state == state and result.run_id == outcome.run_id
        _trial.tell(study, trial, result)
    fail, pruned = study.get_trials()
    assert fail.state == TrialState.FAIL and fail.user_attrs["fail_reason"].startswith("NonFiniteLoss")
    assert fail.user_attrs["traceback"].endswith("NonFiniteLoss: loss") and fail.user_attrs["mlflow_run_id"] == "r1"
    assert pruned.state == TrialState.PRUNED and pruned.user_attrs["pruned_reason"] == "pruned after epoch 1"


def test_a_trial_whose_stage_finished_in_another_workdir_is_scored_from_its_tracking_run(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("elsewhere")).info.run_id
    epochs = [{"rsum": 150.0, "r1": 30.0}, {"rsum": 170.0, "r1": 28.0}, {"rsum": 170.0, "r1": 35.0}, {"rsum": 160.0, "r1": 40.0}]
    for step, values in enumerate(epochs):
        for key, value in values.items():
            client.log_metric(run_id, f"val/{key}", value, step=step)
    client.log_metric(run_id, "test/rsum", 999.0, step=0)  # the test split never scores a trial
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    reporter = _trial._Reporter(trial, "val/r1")
    ctx = TaskContext(str(tmp_path / "empty-workdir"), uri, "s", "parent", False, {})  # no stage record here
    # the checkpoint is chosen by val/rsum (the first of equal bests, epoch 1); the objective is its val/r1
    result = _trial._result(TaskOutcome(None, "FINISHED", run_id), reporter, ctx, "digest", "rsum", "r1")
    assert result.state == TrialState.COMPLETE and result.value == 28.0 and result.run_id == run_id
    assert reporter.reported == {0, 1, 2, 3}  # every epoch reported to the pruner's record


# ------------------------------------------------------------------------------- executor
@pytest.mark.slow
def test_a_stopped_task_is_neither_done_nor_failed_and_resumes(tmp_path):
    study = Study(name="stop", setting=str(TINY), base={"pretrain.enabled": False, "finetune.epochs": 2},
                  arms=(ArmSpec(label="a"),))
    (task,) = plan_tasks(make_plan(study))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ctx = TaskContext(str(tmp_path / "work"), uri, "stop", "parent-id", False, provenance())

    def stop_after_first_epoch(event):
        if event.kind == "epoch":
            raise TaskStopped("pruned after epoch 1")

    outcome = execute_task(task, ctx, None, stop_after_first_epoch, tags={names.TAG_TRIAL: 0})
    assert outcome.status == "STOPPED" and outcome.error == "pruned after epoch 1"
    finetune = stage_dir(ctx.workdir, task.stages[0].hash)
    assert (finetune / LAST_CHECKPOINT).is_file() and not (finetune / DONE).exists()
    run = mlflow.MlflowClient(uri).get_run(outcome.run_id)
    assert run.info.status == "KILLED" and run.data.tags[names.TAG_TRIAL] == "0"

    again = execute_task(task, ctx, None, lambda event: None)  # resumes the run and the stage
    assert again.status == "FINISHED" and again.run_id == outcome.run_id
    assert (finetune / DONE).is_file()
    assert json.loads((finetune / "last.json").read_text())["epoch"] == 1


# ------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_six_trials_two_workers_killed_and_resumed_share_one_pretraining_and_track_each_trial(tmp_path):
    spec = write_spec(tmp_path, n_trials=6, pruner={"name": "median", "args": {"n_startup_trials": 2}},
                      sampler={"name": "tpe", "args": {"n_startup_trials": 3}}, seeds=[0, 1])
    work, uri = tmp_path / "work", f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, "-m", "harness", "sweep", str(spec), "--optuna", "--workers", "2",
           "--workdir", str(work), "--tracking-uri", uri, "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline:  # kill -9 the whole sweep (launcher and workers) mid-way
        assert proc.poll() is None, "the sweep ended before it could be killed"
        study = started_study(work, "tiny-sweep")
        if study is not None:
            tally = _storage.counts(study)
            if tally.finished >= 2 and tally.running >= 1:
                break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = journal_study(work, "tiny-sweep").get_trials()
    interrupted = {t.number for t in before if t.state == TrialState.RUNNING}
    assert interrupted

    result = runner.invoke(app, ["sweep", str(spec), "--optuna", "--workers", "2", "--workdir", str(work),
                                 "--tracking-uri", uri, "--quiet", "--export-best", str(tmp_path / "best.yaml")])
    assert result.exit_code == 0, result.output
    counted = assert_sweep_reached(journal_study(work, "tiny-sweep"), 6)
    assert {t.number for t in before if t.state.is_finished()} <= {t.number for t in counted}  # none re-run
    assert {t.user_attrs[_storage.REQUEUE_OF] for t in counted if _storage.REQUEUE_OF in t.user_attrs} == interrupted

    # one pre-training for the whole sweep: one stage folder trained it, one tracked run
    assert sorted(stage_kinds(work).values()).count("pretrain") == 1
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("tiny-sweep")
    everything = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in everything if r.data.tags[names.TAG_STAGE] == names.STAGE_SWEEP]
    assert [r.data.tags[names.TAG_ARM] for r in everything if r.data.tags[names.TAG_STAGE] == "pretrain"] == ["shared"]
    assert all(r.info.status != "RUNNING" for r in everything)
    # one run per trial (an interrupted trial's run is resumed by its copy), nested, with history
    runs = trial_runs(uri, "tiny-sweep")
    assert sorted(int(r.data.tags[names.TAG_TRIAL]) for r in runs) == sorted(t.number for t in counted)
    by_number = {t.number: t for t in counted}
    for run in runs:
        trial = by_number[int(run.data.tags[names.TAG_TRIAL])]
        assert run.data.tags[names.TAG_PARENT_RUN_ID] == parent.info.run_id
        assert run.data.tags[names.TAG_TRIAL_STATE] == trial.state.name.lower()
        assert json.loads(run.data.tags[names.TAG_TRIAL_PARAMS]) == pytest.approx(trial.params)
        history = client.get_metric_history(run.info.run_id, "val/rsum")
        assert sorted({m.step for m in history}) == sorted(trial.intermediate_values)
        for tag in (names.TAG_GIT_COMMIT, names.TAG_CONFIG_HASH, names.TAG_SEED):
            assert tag in run.data.tags
    best = max((t for t in counted if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert parent.data.tags[names.TAG_BEST_TRIAL] == str(best.number)
    assert parent.data.metrics[names.BEST_VALUE] == pytest.approx(best.value)
    assert json.loads(parent.data.tags[names.TAG_SAMPLER])["settings"]["n_startup_trials"] == 3
    figures = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, names.ARTIFACT_FIGURES)}
    assert {"history.png", "parallel.png", "slice.png"} <= figures

    # the exported study re-runs the best config with the spec's seeds through `harness run`
    exported = load_study(tmp_path / "best.yaml")
    assert exported.seeds == (0, 1)
    assert {k: exported.base[k] for k in best.params} == pytest.approx(best.params)
    assert len(make_plan(exported).runs) == 2

    # `harness report SWEEP --latex`: the top-k table from the store alone, best first
    out = tmp_path / "reports"
    report = runner.invoke(app, ["report", "tiny-sweep", "--latex", "--out", str(out), "--tracking-uri", uri])
    assert report.exit_code == 0, report.output
    table = pd.read_csv(out / "tiny-sweep" / "table.csv")
    complete = sorted((t for t in counted if t.state == TrialState.COMPLETE), key=lambda t: -t.value)
    assert list(table["trial"]) == [t.number for t in complete]
    assert list(table["val/rsum"]) == pytest.approx([t.value for t in complete])
    tex = (out / "tiny-sweep" / "table.tex").read_text()
    assert r"\toprule" in tex and r"\texttt{finetune.optim.lr}" in tex
    assert (out / "tiny-sweep" / "history.png").is_file() and (out / "tiny-sweep" / "slice.pdf").is_file()


@pytest.mark.slow
def test_a_worker_killed_mid_trial_is_requeued_and_the_sweep_still_reaches_its_count(tmp_path):
    spec = write_spec(tmp_path, "kill-worker", n_trials=3, pruner="none")
    work, uri = tmp_path / "work", f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, "-m", "harness", "sweep", str(spec), "--optuna", "--workers", "2",
           "--workdir", str(work), "--tracking-uri", uri, "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim, deadline = None, time.time() + 240
    while victim is None and time.time() < deadline:
        assert proc.poll() is None, "the sweep ended before a worker could be killed"
        study = started_study(work, "kill-worker")
        if study is not None:
            for trial in study.get_trials(states=(TrialState.RUNNING,)):
                if trial.intermediate_values and "worker" in trial.user_attrs:  # mid-trial: an epoch reported
                    victim = trial
        time.sleep(0.2)
    assert victim is not None, "no trial got to report an epoch"
    os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]

    counted = assert_sweep_reached(journal_study(work, "kill-worker"), 3)
    killed = journal_study(work, "kill-worker").get_trials()[victim.number]
    assert killed.state == TrialState.FAIL and "worker died" in killed.user_attrs["fail_reason"]
    (copy,) = [t for t in counted if t.user_attrs.get(_storage.REQUEUE_OF) == victim.number]
    assert copy.params == killed.params
    assert all(r.info.status != "RUNNING" for r in trial_runs(uri, "kill-worker"))


def _postgres_bin() -> Path:
    """The PostgreSQL server binaries (Debian's postgresql package; .ci/run installs it)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not candidates:
        pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql (.ci/run does)")
    return candidates[-1].parent


@pytest.fixture
def postgres(tmp_path):
    """A throwaway PostgreSQL server on 127.0.0.1, run as an unprivileged user (it refuses root)."""
    bindir = _postgres_bin()
    user = "nobody" if os.geteuid() == 0 else None
    home = Path(tempfile.mkdtemp(prefix="harness-pg-"))  # pytest's tmp folders are root's alone
    data = home / "data"
    data.mkdir()
    if user:
        shutil.chown(home, user)
        shutil.chown(data, user)

    def as_user(*args: str) -> subprocess.CompletedProcess:
        command = ["runuser", "-u", user, "--", *args] if user else list(args)
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    init = as_user(str(bindir / "initdb"), "-D", str(data), "-U", "harness", "--auth=trust", "-E", "UTF8")
    assert init.returncode == 0, init.stderr
    with socket.socket() as probe:  # a free port on the loopback
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    options = f"-h 127.0.0.1 -p {port} -k {data}"
    start = as_user(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(data / "log"), "-w", "start")
    assert start.returncode == 0, start.stderr
    try:
        yield f"postgresql+psycopg2://harness@127.0.0.1:{port}/postgres"
    finally:
        as_user(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_on_a_postgresql_storage_share_one_study_without_duplicate_numbers(tmp_path, postgres):
    spec = write_spec(tmp_path, "pg-sweep", n_trials=3, pruner="none", base={**TINY_BASE, "finetune.epochs": 1})
    result = run_sweep(spec, workdir=tmp_path / "work", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
                       storage=postgres, workers=2)
    study = optuna.load_study(study_name="pg-sweep", storage=postgres)
    counted = assert_sweep_reached(study, 3)
    assert sorted(t.number for t in counted) == [0, 1, 2]
    assert len({t.user_attrs["worker"] for t in counted}) == 2  # both workers ran trials
    assert result.best is not None and result.best.number in {t.number for t in counted}
    stored = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(result.parent_run_id).data.tags
    assert "postgresql" in stored[names.TAG_STORAGE] and "harness@127.0.0.1" in stored[names.TAG_STORAGE]


@pytest.mark.slow
def test_sweep_benchmark_compares_epochs_wall_time_and_best_value_of_both_pruners(tmp_path):
    spec = write_spec(tmp_path, "bench", pruner={"name": "median", "args": {"n_startup_trials": 1}},
                      base={**TINY_BASE, "finetune.epochs": 2})
    result = bench_sweep(spec, n_trials=2, epochs=3, data_scale=0.5)  # trials longer, on half the data
    assert result["finetune_epochs_per_trial"] == 3 and "data.synthscenes.num_train=24" in result["notes"][-1]
    for pruner in ("median", "none"):
        assert result[f"{pruner}_complete"] + result[f"{pruner}_pruned"] + result[f"{pruner}_failed"] == 2
        assert result[f"{pruner}_wall_s"] > 0 and result[f"{pruner}_pretrain_epochs"] == 1
    assert result["none_finetune_epochs"] == 2 * 3 and result["none_pruned"] == 0  # every trial, every epoch
    assert result["median_finetune_epochs"] <= 2 * 3
    assert result["epochs_share"] == pytest.approx(result["median_finetune_epochs"] / result["none_finetune_epochs"])
    assert result["best_gap"] == pytest.approx(result["none_best_value"] - result["median_best_value"])
    epochs, gap = result["checks"]  # the targets the benchmark report shows
    assert epochs["value"] == result["epochs_share"] and epochs["target"] == 0.6 and epochs["op"] == "<="
    assert epochs["met"] == (result["epochs_share"] <= 0.6)
    assert gap["value"] == result["best_gap"] and gap["target"] == pytest.approx(result["unpruned_value_sd"])


# ------------------------------------------------------------------------------------ CLI
def test_sweep_without_the_optuna_flag_says_to_add_it(tmp_path):
    result = runner.invoke(app, ["sweep", str(write_spec(tmp_path)), "--workdir", str(tmp_path)])
    assert result.exit_code == 1 and "--optuna" in result.output and "Traceback" not in result.output


def test_sweep_with_a_bad_spec_exits_1_before_anything_is_written(tmp_path):
    path = write_spec(tmp_path, sampler="tpee")
    work = tmp_path / "work"
    result = runner.invoke(app, ["sweep", str(path), "--optuna", "--workdir", str(work)])
    assert result.exit_code == 1 and "did you mean 'tpe'" in " ".join(result.output.split())
    assert not work.exists()


def test_resuming_a_sweep_with_another_space_is_refused(tmp_path):
    work = tmp_path / "work"
    folder = _storage.sweep_dir(work, "tiny-sweep")
    optuna.create_study(study_name="tiny-sweep", storage=_storage.open_storage(None, folder)).set_user_attr(
        "harness.space", json.dumps({"other": {}})
    )
    with pytest.raises(UserError, match="searches another space"):
        run_sweep(write_spec(tmp_path), workdir=work, tracking_uri=f"sqlite:///{tmp_path}/m.db")


def test_liveness_lock_is_released_when_its_holder_dies(tmp_path):
    lock = tmp_path / "held.lock"
    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from harness._locks import flock\n"
        f"with flock(Path({str(lock)!r})):\n    print('held', flush=True); time.sleep(60)"
    )], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    assert is_held(lock)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not is_held(lock)
    with flock(lock, blocking=False):
        assert is_held(lock)
