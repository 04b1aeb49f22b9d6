"""Scale-out: a stage on several processes under torch's launcher (`--nproc-per-node`, gloo on
CPU), also on two hand-started nodes (`--nnodes`), trains and evaluates as one process does on the
same global batch, is one tracking run, and resumes after a kill; a study tracked on an `mlflow
server` is reported from it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from core.errors import UserError
from core.stages import BEST_CHECKPOINT, LAST_CHECKPOINT
from harness._rank import Launch
from harness.cli import app
from harness.plan import DONE, make_plan, stage_dir
from harness.preflight import check_launch
from harness.study import load_study
from harness.tracking import names

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny.yaml"
# no randomness that depends on which process holds a pair (dropout), and the ViT's LayerNorms
# rather than a CNN's per-process BatchNorm statistics (tiny.yaml's backbone)
BASE = {
    "pretrain.epochs": 1,
    "finetune.epochs": 3,
    "model.text.dropout": 0.0,
    "model.text.config_overrides.hidden_dropout_prob": 0.0,
    "model.text.config_overrides.attention_probs_dropout_prob": 0.0,
}
runner = CliRunner()


def write_study(tmp_path: Path, **base) -> Path:
    path = tmp_path / "launched.yaml"
    path.write_text(yaml.safe_dump({"name": "launched", "setting": str(TINY), "base": {**BASE, **base}, "arms": [{"label": "only"}]}))
    return path


def curves(uri: str) -> dict[str, dict[str, list[float]]]:
    """Per stage run: every metric's values in step order."""
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("launched")
    out = {}
    for run in client.search_runs([experiment.experiment_id]):
        stage = run.data.tags[names.TAG_STAGE]
        assert stage not in out, f"two {stage} runs"  # one tracking run per stage, however many processes
        assert run.info.status == "FINISHED"
        keep = [k for k in run.data.metrics if not k.endswith("pairs_per_s")]  # speed differs, results do not
        out[stage] = {k: [m.value for m in sorted(client.get_metric_history(run.info.run_id, k), key=lambda m: m.step)] for k in keep}
    return out


def assert_same_results(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys() == {"study", "pretrain", "finetune"}
    for stage, metrics in expected.items():
        assert got[stage].keys() == metrics.keys(), stage
        for key, values in metrics.items():
            assert got[stage][key] == pytest.approx(values, abs=1e-5), f"{stage} {key}"


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("one")
    uri = f"sqlite:///{tmp}/mlflow.db"
    result = runner.invoke(app, ["run", str(write_study(tmp)), "--workdir", str(tmp / "work"), "--tracking-uri", uri, "--quiet"])
    assert result.exit_code == 0, result.output
    return tmp, curves(uri)


@pytest.mark.slow
def test_two_processes_under_torchrun_give_one_process_results_in_one_run_with_one_checkpoint(tmp_path, one_process):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["run", str(write_study(tmp_path)), "--workdir", str(tmp_path / "work"), "--tracking-uri", uri, "--quiet"]
    result = runner.invoke(app, [*args, "--nproc-per-node", "2"])
    assert result.exit_code == 0, result.output
    # train/loss per epoch (the mean of its steps' losses), val/* per epoch, test/*: to 1e-5
    assert_same_results(curves(uri), one_process[1])
    for folder in (tmp_path / "work" / "stages").iterdir():
        assert (folder / DONE).is_file()
        if (folder / LAST_CHECKPOINT).exists():  # a training stage: one best, one last, whoever wrote them
            assert sorted(p.name for p in folder.glob("*.safetensors")) == sorted([BEST_CHECKPOINT, LAST_CHECKPOINT])
        assert json.loads((folder / "launch.json").read_text())["kind"] in ("pretrain", "finetune", "eval")


@pytest.mark.slow
def test_a_killed_torchrun_stage_resumes_and_ends_as_the_uninterrupted_one(tmp_path, one_process):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "harness", "run", str(write_study(tmp_path)), "--workdir", str(work),
           "--tracking-uri", uri, "--quiet", "--nproc-per-node", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not _finetune_mid_way(work):
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the harness alone (the launcher has a session of its own)
    proc.wait()
    deadline = time.time() + 60
    while _ranks_of(work) and time.time() < deadline:  # the launcher and its ranks die with it
        time.sleep(0.5)
    assert not _ranks_of(work), "a launcher or rank outlived the killed harness"
    resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert_same_results(curves(uri), one_process[1])


@pytest.mark.slow
def test_two_nodes_started_by_hand_give_one_process_results_and_node_0_tracks_alone(tmp_path, one_process):
    # two "machines" on 127.0.0.1, one process each: the world of the two-process test above
    uri, work, endpoint = f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "work", f"127.0.0.1:{free_port()}"
    study = write_study(tmp_path)
    follower = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", str(study), "--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint", endpoint],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        result = runner.invoke(app, ["run", str(study), "--workdir", str(work), "--tracking-uri", uri, "--quiet",
                                     "--nnodes", "2", "--rdzv-endpoint", endpoint])  # fmt: skip
        assert result.exit_code == 0, result.output
        followed, _ = follower.communicate(timeout=120)
    finally:
        follower.kill()
    assert follower.returncode == 0, followed
    assert "node 0 ended (done); this node ran 3 stages" in followed  # pretrain, finetune, eval
    assert_same_results(curves(uri), one_process[1])  # one tracking run per stage, node 0's
    for folder in (work / "stages").iterdir():  # node 1 wrote nothing but its launcher's output
        assert (folder / DONE).is_file() and (folder / "launch-node1.log").is_file()
        if (folder / LAST_CHECKPOINT).exists():
            assert sorted(p.name for p in folder.glob("*.safetensors")) == sorted([BEST_CHECKPOINT, LAST_CHECKPOINT])


@pytest.mark.slow
def test_a_damaged_parent_checkpoint_under_torchrun_resets_its_stage_as_in_one_process(tmp_path, one_process):
    work = tmp_path / "work"
    shutil.copytree(one_process[0] / "work", work)
    shutil.copy(one_process[0] / "mlflow.db", tmp_path / "mlflow.db")
    study = write_study(tmp_path, **{"finetune.epochs": 1})  # a new fine-tuning on the finished pre-training
    (digest,) = [d for d, stage in make_plan(load_study(study)).stages.items() if stage.kind == "pretrain"]
    pretrain = stage_dir(work, digest)
    best = pretrain / BEST_CHECKPOINT
    data = bytearray(best.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content
    best.write_bytes(bytes(data))
    result = runner.invoke(app, ["run", str(study), "--workdir", str(work), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                                 "--quiet", "--nproc-per-node", "2"])  # fmt: skip
    assert result.exit_code == 1, result.output
    flat = " ".join(result.output.split())
    # the rank's DamagedCheckpoint, not "the launcher exited with 1": the stage named, reset, retried next time
    assert f"damaged checkpoint {best}" in flat and "that stage was reset and trains again on the next run" in flat
    assert best.with_name(best.name + ".damaged").is_file() and not (pretrain / DONE).exists()


def test_a_ranks_failure_reaches_the_executor_as_its_own_kind(tmp_path):
    from core.checkpoint import DamagedCheckpoint
    from harness import _rank
    from harness.execute import _describe_failure
    from harness.plan import StageRecord

    assert _rank.rank_failure(tmp_path) is None  # no rank recorded one: the launcher's log tells
    _rank._record_failure(tmp_path, 1, DamagedCheckpoint(tmp_path / "best.safetensors", "truncated"))
    _rank._record_failure(tmp_path, 0, RuntimeError("a collective's peer died"))  # follows from the first: not kept
    failure = _rank.rank_failure(tmp_path)
    assert isinstance(failure, DamagedCheckpoint) and (failure.path, failure.reason) == (tmp_path / "best.safetensors", "truncated")
    assert "raised on rank 1" in failure.__notes__[0]
    (tmp_path / _rank.ERROR_FILE).unlink()
    _rank._record_failure(tmp_path, 1, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    failure = _rank.rank_failure(tmp_path)
    assert isinstance(failure, _rank.RankFailed) and failure.error_type == "OutOfMemoryError"
    stage = StageRecord(kind="finetune", hash="abc123", parent=None, config=None, users=())
    assert "out of memory (rank 1: OutOfMemoryError: CUDA out of memory." in _describe_failure(failure, stage)
    assert "lower finetune.batch_size" in _describe_failure(failure, stage)
    (tmp_path / _rank.ERROR_FILE).unlink()
    _rank._record_failure(tmp_path, 0, UserError("finetune.batch_size=16 is not divisible by 3 processes"))
    failure = _rank.rank_failure(tmp_path)
    assert type(failure) is UserError and str(failure) == "finetune.batch_size=16 is not divisible by 3 processes"


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ranks_of(work: Path) -> list[int]:
    """The pids of processes whose command line names this workdir (launchers and ranks)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(work) in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
        except OSError:  # gone meanwhile
            pass
    return pids


def _finetune_mid_way(work: Path) -> bool:
    for last in work.glob("stages/*/last.json"):
        if json.loads(last.read_text())["epoch"] >= 1 and not (last.parent / DONE).exists():
            meta = json.loads((last.parent / "launch.json").read_text())
            return meta["kind"] == "finetune"
    return False


@pytest.mark.parametrize(
    ("launch", "devices", "message"),
    [
        (Launch(nproc_per_node=3), (), "finetune.batch_size=16 does not split between 3 processes"),
        (Launch(nproc_per_node=2), ("cuda:0",), "--devices and --nproc-per-node: give one"),
    ],
)
def test_a_launch_that_cannot_run_the_plan_is_refused_before_any_work(tmp_path, launch, devices, message):
    plan = make_plan(load_study(write_study(tmp_path, **{"pretrain.batch_size": 12})))
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        check_launch(plan, launch, devices)


def test_the_launcher_command_is_torchs_elastic_launcher():
    assert Launch(2).command()[1:] == ["-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone"]
    # on several nodes: torch's static rendezvous, so node 0 holds global ranks 0 .. nproc - 1
    on_node_1 = Launch(4, nnodes=2, node_rank=1, rdzv_endpoint="gpu-a:29400").command(31234)
    assert on_node_1[1:] == ["-m", "torch.distributed.run", "--nproc-per-node=4", "--nnodes=2", "--node-rank=1",
                             "--master-addr=gpu-a", "--master-port=31234"]  # fmt: skip


# ------------------------------------------------------------------------- a tracking server
@pytest.fixture
def mlflow_server(tmp_path):
    """``mlflow server`` on 127.0.0.1 (its own store and artifact folder): the URL and the folder."""
    import urllib.request

    port = free_port()
    artifacts = tmp_path / "server-artifacts"
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline, "mlflow server did not answer"
                time.sleep(0.5)
        yield url, artifacts
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        log.close()


@pytest.mark.slow
def test_a_study_tracked_on_an_mlflow_server_is_reported_from_it(tmp_path, mlflow_server):
    url, artifacts = mlflow_server
    study = write_study(tmp_path, **{"finetune.epochs": 1})
    ran = runner.invoke(app, ["run", str(study), "--workdir", str(tmp_path / "work"), "--tracking-uri", url, "--quiet"])
    assert ran.exit_code == 0, ran.output
    client = mlflow.MlflowClient(url)
    runs = client.search_runs([client.get_experiment_by_name("launched").experiment_id])
    assert sorted(r.data.tags[names.TAG_STAGE] for r in runs) == ["finetune", "pretrain", "study"]
    # artifacts go where the server says: its own folder, not the workdir
    assert list(artifacts.rglob(names.ARTIFACT_RANKS)) and not list((tmp_path / "work").rglob("mlartifacts"))
    report = runner.invoke(app, ["report", "launched", "--tracking-uri", url, "--out", str(tmp_path / "reports")])
    assert report.exit_code == 0, report.output
    (row,) = pd.read_csv(tmp_path / "reports" / "launched" / "table.csv").to_dict("records")
    finetune = next(r for r in runs if r.data.tags[names.TAG_STAGE] == "finetune")
    assert row["arm"] == "only" and row["rsum_mean"] == pytest.approx(finetune.data.metrics[names.test_metric("rsum")])


def test_an_unreachable_tracking_server_is_an_error_before_any_work(tmp_path):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = runner.invoke(app, ["run", str(write_study(tmp_path)), "--workdir", str(tmp_path / "work"),
                                 "--tracking-uri", f"http://127.0.0.1:{port}", "--quiet"])  # fmt: skip
    assert result.exit_code == 1 and f"127.0.0.1:{port}" in result.output
    assert not list((tmp_path / "work").glob("stages/*"))  # nothing trained
