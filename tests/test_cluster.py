"""Cluster jobs through submitit: a study through `--executor submitit-local` (dependencies kept,
the store as a local run leaves it), the sbatch scripts of a paper-scale study on SLURM (checked
through stand-in `sbatch` / `sacct` commands, since no cluster exists here), `harness status`, and
a setting's `cluster:` section."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import mlflow
import pytest
import yaml
from typer.testing import CliRunner

from core.errors import UserError
from harness.cli import app
from harness.cluster import JOBS_FILE, ClusterOptions, cluster_options
from harness.tracking import names

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "data" / "tiny.yaml"
runner = CliRunner()


def tiny_study(tmp_path: Path, name: str = "jobs") -> Path:
    path = tmp_path / f"{name}.yaml"
    study = {"name": name, "setting": str(TINY), "base": {"pretrain.epochs": 1, "finetune.epochs": 1}, "vary": {"model.decoder.depth": [0, 1]}}
    path.write_text(yaml.safe_dump(study))
    return path


def layout(uri: str, study: str) -> list[tuple]:
    """The store's runs as what the report reads: (stage, arm, seed, status, param keys, metric
    keys, test rSum), sorted."""
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(study).experiment_id])
    return sorted(
        (r.data.tags[names.TAG_STAGE], r.data.tags.get(names.TAG_ARM), r.data.tags.get(names.TAG_SEED), r.info.status,
         tuple(sorted(r.data.params)), tuple(sorted(k for k in r.data.metrics if not k.endswith("pairs_per_s"))),
         round(r.data.metrics.get(names.test_metric("rsum"), -1.0), 6))
        for r in runs
    )  # fmt: skip


@pytest.mark.slow
def test_a_two_arm_study_through_submitit_local_keeps_dependencies_and_the_local_layout(tmp_path):
    study = tiny_study(tmp_path)
    local_uri, jobs_uri = f"sqlite:///{tmp_path}/local.db", f"sqlite:///{tmp_path}/jobs.db"
    local = runner.invoke(app, ["run", str(study), "--workdir", str(tmp_path / "local"), "--tracking-uri", local_uri, "--quiet"])
    assert local.exit_code == 0, local.output
    work = tmp_path / "work"
    jobs = runner.invoke(app, ["run", str(study), "--workdir", str(work), "--tracking-uri", jobs_uri, "--executor", "submitit-local"])
    assert jobs.exit_code == 0, jobs.output
    assert layout(jobs_uri, "jobs") == layout(local_uri, "jobs")  # the same runs, params, metrics and results

    client = mlflow.MlflowClient(jobs_uri)
    runs = client.search_runs([client.get_experiment_by_name("jobs").experiment_id])
    (pretrain,) = [r for r in runs if r.data.tags[names.TAG_STAGE] == "pretrain"]
    finetunes = [r for r in runs if r.data.tags[names.TAG_STAGE] == "finetune"]
    assert len(finetunes) == 2 and all(r.info.start_time >= pretrain.info.end_time for r in finetunes)  # after it
    recorded = json.loads((work / "jobs" / "jobs" / JOBS_FILE).read_text())
    assert sorted((j["stage"], j["arm"]) for j in recorded.values()) == [("finetune", "depth=0"), ("finetune", "depth=1"), ("pretrain", "shared")]

    again = runner.invoke(app, ["run", str(study), "--workdir", str(work), "--tracking-uri", jobs_uri, "--executor", "submitit-local"])
    assert again.exit_code == 0 and again.output.count("│ done") == 3  # collected: nothing submitted again
    assert len(json.loads((work / "jobs" / "jobs" / JOBS_FILE).read_text())) == 3

    status = runner.invoke(app, ["status", "jobs", "--workdir", str(work), "--tracking-uri", jobs_uri, "--no-slurm"], terminal_width=200)
    assert status.exit_code == 0, status.output
    assert "3 done" in status.output and status.output.count("depth=") == 2


# ----------------------------------------------------------------------------------- SLURM
@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``sbatch`` that keeps each script and answers a job id; ``sacct`` that says PENDING."""
    bin_dir, scripts = tmp_path / "bin", tmp_path / "scripts"
    bin_dir.mkdir()
    scripts.mkdir()
    (bin_dir / "sbatch").write_text(
        "#!/bin/bash\n"
        f'n=$(cat {tmp_path}/counter 2>/dev/null || echo 500); n=$((n+1)); echo $n > {tmp_path}/counter\n'
        f'cp "$1" {scripts}/$n.sh\n'
        'echo "Submitted batch job $n"\n'
    )
    (bin_dir / "sacct").write_text(
        "#!/bin/bash\necho 'JobID|State|NodeList'\n"
        'while [ $# -gt 0 ]; do if [ "$1" = "-j" ]; then echo "$2|PENDING|"; echo "$2_[0-63]|PENDING|"; shift; fi; shift; done\n'
    )
    (bin_dir / "srun").write_text("#!/bin/bash\nexit 1\n")  # submitit looks for it; nothing runs here
    for tool in ("sbatch", "sacct", "srun"):
        (bin_dir / tool).chmod((bin_dir / tool).stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return scripts


@pytest.fixture
def paper_scale_files(tmp_path, monkeypatch):
    """The files flickr30k-vit224 names, as empty stand-ins (planning reads no image)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "datasets/flickr30k/images").mkdir(parents=True)
    (tmp_path / "datasets/flickr30k/dataset_flickr30k.json").write_text('{"images": []}')
    (tmp_path / "datasets/flickr30k/dense_captions.jsonl").write_text("")
    (tmp_path / "weights/bert-base-uncased").mkdir(parents=True)
    (tmp_path / "weights/bert-base-uncased/config.json").write_text("{}")
    (tmp_path / "weights/vit_base_patch16_224.safetensors").write_bytes(b"")


def test_a_paper_scale_study_on_slurm_is_one_job_per_pretraining_and_an_array_after_it(tmp_path, fake_slurm, paper_scale_files):
    args = ["run", str(ROOT / "studies" / "decoder_depth.yaml"), "--setting", "flickr30k-vit224", "--executor", "slurm",
            "--workdir", str(tmp_path / "work"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--nproc-per-node", "4",
            "--partition", "gpu", "--time", "720", "--account", "lab", "--qos", "high", "--sbatch", "--constraint=a100"]  # fmt: skip
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    pretrain, array = (fake_slurm / "501.sh").read_text(), (fake_slurm / "502.sh").read_text()
    for script in (pretrain, array):  # resources, from the options
        for line in ("--partition=gpu", "--time=720", "--gpus-per-node=4", "--account=lab", "--qos=high", "--constraint=a100", "--nodes=1"):
            assert f"#SBATCH {line}" in script, line
    assert "--array" not in pretrain and "--dependency" not in pretrain
    assert re.search(r"#SBATCH --array=0-3%\d+", array)  # the 4 decoder depths of seed 0
    assert "#SBATCH --dependency=afterok:501" in array  # they start once the pre-training succeeded
    assert "submitted" in result.output and "502_3" in result.output and "harness status decoder_depth" in result.output
    # the collect command it suggests is the same submission (setting, processes, resources)
    collect = next(line for line in result.output.splitlines() if "# again" in line)
    for option in ("--setting flickr30k-vit224", "--nproc-per-node 4", "--executor slurm", "--partition gpu", "--sbatch=--constraint=a100"):
        assert option in collect, option
    assert "#SBATCH --kill-on-invalid-dep=yes" in array  # a failed pre-training cancels its array

    again = runner.invoke(app, args, terminal_width=200)  # sacct says PENDING: nothing is submitted twice
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in fake_slurm.iterdir()) == ["501.sh", "502.sh"] and again.output.count("│ queued") == 5
    status = runner.invoke(app, ["status", "decoder_depth", "--workdir", str(tmp_path / "work"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"], terminal_width=200)
    assert status.exit_code == 0 and "5 queued" in status.output


def test_a_study_on_several_slurm_nodes_asks_for_them_with_one_harness_task_each(tmp_path, fake_slurm, paper_scale_files):
    args = ["run", str(ROOT / "studies" / "decoder_depth.yaml"), "--setting", "flickr30k-vit224", "--executor", "slurm",
            "--workdir", str(tmp_path / "work"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--nproc-per-node", "4",
            "--nnodes", "2"]  # fmt: skip
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    for script in ((fake_slurm / "501.sh").read_text(), (fake_slurm / "502.sh").read_text()):
        for line in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=4"):  # 8 ranks: 4 per node, started by its task
            assert f"#SBATCH {line}" in script, line
    assert "--nnodes 2" in next(line for line in result.output.splitlines() if "# again" in line)


def test_a_settings_cluster_section_is_read_under_the_command_line(tmp_path):
    setting = tmp_path / "gpu.yaml"
    setting.write_text(yaml.safe_dump({"extends": str(TINY), "cluster": {"partition": "a100", "time": 60, "sbatch": ["--exclusive=user"]}}))
    options = cluster_options(str(setting), {"time": 120, "partition": None, "sbatch": ()})
    assert options == ClusterOptions(partition="a100", time=120, sbatch=("--exclusive=user",))
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"extends": str(TINY), "cluster": {"partitoin": "x"}}))
    with pytest.raises(UserError, match="cluster.partitoin"):
        cluster_options(str(tmp_path / "bad.yaml"), {})
