"""`harness run` end to end on the tiny setting: sharing, caching, tracking, resume, failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from harness.cli import app
from harness.execute import study_lock
from harness.tracking import names

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny.yaml"
runner = CliRunner()


def write_study(tmp_path: Path, name: str, **fields) -> Path:
    study = {"name": name, "setting": str(TINY), **fields}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def invoke(*args: str):
    return runner.invoke(app, [*args], catch_exceptions=False)


def runs_of(uri: str, study: str) -> list:
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(study)
    return client.search_runs([experiment.experiment_id]) if experiment else []


def finetune_mid_way(work: Path) -> bool:
    """A stage has checkpointed its second epoch and is not done (pre-training has 1 epoch)."""
    for last in work.glob("stages/*/last.json"):
        if json.loads(last.read_text())["epoch"] >= 1 and not (last.parent / "DONE").exists():
            return True
    return False


def by_stage(runs: list, stage: str) -> list:
    return [r for r in runs if r.data.tags.get(names.TAG_STAGE) == stage]


@pytest.mark.slow
def test_two_arms_two_seeds_on_two_workers_share_pretraining_and_rerun_runs_nothing(tmp_path):
    study = write_study(tmp_path, "two-by-two", vary={"model.decoder.depth": [0, 1]}, seeds=[0, 1])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["run", str(study), "--workdir", str(tmp_path / "work"), "--tracking-uri", uri, "--quiet", "--workers", "2"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output

    runs = runs_of(uri, "two-by-two")
    (parent,) = by_stage(runs, "study")
    pretrains, finetunes = by_stage(runs, "pretrain"), by_stage(runs, "finetune")
    assert len(pretrains) == 2  # one per seed, shared by both depths
    assert sorted((r.data.tags[names.TAG_ARM], r.data.tags[names.TAG_SEED]) for r in finetunes) == [
        ("depth=0", "0"), ("depth=0", "1"), ("depth=1", "0"), ("depth=1", "1"),
    ]
    pretrain_ids = {r.info.run_id for r in pretrains}
    for run in pretrains + finetunes:
        assert run.info.status == "FINISHED"
        assert run.data.tags[names.TAG_PARENT_RUN_ID] == parent.info.run_id
        for tag in (names.TAG_STUDY, names.TAG_CONFIG_HASH, names.TAG_GIT_COMMIT, names.TAG_GIT_DIRTY):
            assert tag in run.data.tags
    for run in finetunes:
        assert run.data.tags[names.TAG_PRETRAIN_RUN_ID] in pretrain_ids
        assert run.data.params["model.decoder.depth"] in ("0", "1")
        assert {"test/rsum", "val/rsum", "train/loss", "train/align_loss", "lr", "train/pairs_per_s"} <= set(run.data.metrics)

    # the summary ends by saying where the results are and what to run next, unfolded in a log
    flat = " ".join(result.output.split())
    assert f"Next: harness report two-by-two --latex --workdir {tmp_path / 'work'} --tracking-uri {uri}" in flat
    assert f"harness ui --workdir {tmp_path / 'work'} --tracking-uri {uri}" in flat
    summary = next(line for line in result.output.splitlines() if "depth=1" in line and "FINISHED" in line)
    assert "finetune -> eval" in summary and summary.rstrip().endswith("s │")  # each row whole on its line

    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert len(runs_of(uri, "two-by-two")) == len(runs)  # nothing new was tracked
    assert "cached" in again.output

    # the report reads this real store: one row per arm, cells = mean over the seeds' test runs
    report = invoke("report", "two-by-two", "--latex", "--out", str(tmp_path / "reports"), "--tracking-uri", uri)
    assert report.exit_code == 0, report.output
    table = pd.read_csv(tmp_path / "reports" / "two-by-two" / "table.csv")
    assert list(table["arm"]) == ["depth=0", "depth=1"] and list(table["n"]) == [2, 2]
    for arm, rsum in zip(table["arm"], table["rsum_mean"]):
        logged = [r.data.metrics["test/rsum"] for r in finetunes if r.data.tags[names.TAG_ARM] == arm]
        assert rsum == pytest.approx(sum(logged) / len(logged))
    assert "depth=1" in (tmp_path / "reports" / "two-by-two" / "table.tex").read_text()


@pytest.mark.slow
def test_killed_run_resumes_without_duplicates_and_matches_uninterrupted(tmp_path):
    fields = {"base": {"finetune.epochs": 4, "pretrain.epochs": 1}, "arms": [{"label": "only", "set": {}}]}
    study = write_study(tmp_path, "resume", **fields)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    work, uri = tmp_path / "work", f"sqlite:///{tmp_path}/mlflow.db"
    cmd = [sys.executable, "-m", "harness", "run", str(study), "--workdir", str(work), "--tracking-uri", uri, "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.time() + 300
    while time.time() < deadline and not finetune_mid_way(work):  # kill -9 inside a stage
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    runs = runs_of(uri, "resume")
    assert all(r.info.status != "RUNNING" for r in runs)
    finetunes = by_stage(runs, "finetune")
    assert len(finetunes) == 1 and finetunes[0].info.status == "FINISHED"
    assert len(by_stage(runs, "pretrain")) == 1

    fresh = invoke("run", str(study), "--workdir", str(tmp_path / "fresh"), "--tracking-uri",
                   f"sqlite:///{tmp_path}/fresh.db", "--quiet")
    assert fresh.exit_code == 0, fresh.output
    (reference,) = by_stage(runs_of(f"sqlite:///{tmp_path}/fresh.db", "resume"), "finetune")
    for key, value in reference.data.metrics.items():
        if key.startswith(("test/", "val/")):
            assert finetunes[0].data.metrics[key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.slow
def test_failing_arm_is_isolated_and_recorded(tmp_path):
    arms = [{"label": "ok", "set": {}}, {"label": "nan", "set": {"finetune.align.loss": "triplet", "finetune.align.margin": float("nan")}}]
    study = write_study(tmp_path, "failing", arms=arms, base={"pretrain.epochs": 1, "finetune.epochs": 1})
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = invoke("run", str(study), "--workdir", str(tmp_path / "work"), "--tracking-uri", uri, "--quiet")
    assert result.exit_code == 1
    assert "nan" in result.output and "FAILED" in result.output
    finetunes = {r.data.tags[names.TAG_ARM]: r for r in by_stage(runs_of(uri, "failing"), "finetune")}
    assert finetunes["ok"].info.status == "FINISHED"
    assert finetunes["nan"].info.status == "FAILED"
    trace = mlflow.MlflowClient(uri).download_artifacts(finetunes["nan"].info.run_id, names.ARTIFACT_TRACEBACK, str(tmp_path))
    assert "NonFiniteLoss" in Path(trace).read_text()


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"vary": {"model.decoder.dpth": [1, 2]}}, "did you mean 'model.decoder.depth'"),
        ({"vary": {"model.decoder.depth": ["deep"]}}, "model.decoder.depth"),
        ({"vary": {"model.decoder.depth": []}}, "empty"),
        ({"arms": [{"label": "a", "set": {}}, {"label": "a", "set": {}}]}, "labels repeat"),
        ({"setting": "no-such-setting", "vary": {"model.decoder.depth": [1]}}, "no-such-setting"),
        ({"vary": {"model.decoder.depth": [1]}, "colour": "red"}, "colour"),
    ],
)
def test_bad_study_file_is_a_one_screen_error_and_runs_nothing(tmp_path, fields, message):
    study = write_study(tmp_path, "bad", **fields)
    work = tmp_path / "work"
    result = runner.invoke(app, ["run", str(study), "--workdir", str(work), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.splitlines()) < 25
    assert not (tmp_path / "m.db").exists() and not (work / "stages").exists()


def test_dry_run_prints_the_plan_without_side_effects(tmp_path):
    study = write_study(tmp_path, "dry", vary={"model.decoder.depth": [0, 1, 2]}, seeds=[0, 1])
    work = tmp_path / "work"
    result = runner.invoke(app, ["run", str(study), "--dry-run", "--workdir", str(work)], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "6 (arm, seed) runs, 2 pre-trainings" in result.output
    assert not work.exists()


def test_second_concurrent_run_of_a_study_is_refused(tmp_path):
    study = write_study(tmp_path, "locked", vary={"model.decoder.depth": [0]})
    work = tmp_path / "work"
    with study_lock(work, "locked"):
        result = runner.invoke(app, ["run", str(study), "--workdir", str(work), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert result.exit_code == 1
    assert "already being run" in result.output


def test_data_splits_are_cached_per_workdir_not_only_per_data_section(tmp_path):
    from harness._stages import splits_for
    from harness.config import resolve

    config = resolve(TINY)
    first = splits_for(config, tmp_path / "a")
    assert splits_for(config, tmp_path / "a") is first  # one cache per process and workdir
    second = splits_for(config, tmp_path / "b")  # another study's workdir: its own files
    assert second is not first and any((tmp_path / "b" / "data").iterdir())


def test_a_dry_run_loads_no_mlflow_and_on_a_cpu_machine_no_torch(tmp_path):
    study = write_study(tmp_path, "light", vary={"model.decoder.depth": [0, 1]})
    probe = (
        "import sys; from harness.cli import app\n"
        f"try: app(['run', {str(study)!r}, '--dry-run', '--workdir', {str(tmp_path / 'w')!r}])\n"
        "except SystemExit as end: assert end.code in (0, None), end.code\n"
        "from core.runtime import GPU_DRIVER_FILES; from pathlib import Path\n"
        "gpu = any(Path(p).exists() for p in GPU_DRIVER_FILES)\n"
        "print('LOADED', 'mlflow' in sys.modules, 'torch' in sys.modules and not gpu)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "LOADED False False"
