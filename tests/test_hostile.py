"""The hostile-input suite (issue 13): a lab sharing one tracking store, damaged files, a bad
environment and bad inputs. Each test asserts the message, the exit code, and that nothing already
done was lost (finished runs, checkpoints, the store). docs/reliability.md lists every case, its
expected behaviour and its test, including the cases that older tests pin (test_run, test_study,
test_config, test_tracking).

Everything that trains uses tests/data/tiny.yaml with one epoch per stage where the case allows.
Cases that need a real process (signals, two processes at once) run ``python -m harness``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import torch
from safetensors import SafetensorError
from test_data_real import karpathy, laps  # noqa: F401  (fixtures)
from test_run import ROOT, TINY, by_stage, runs_of, write_study
from test_ui import free_port
from typer.testing import CliRunner

import core.checkpoint
import core.model
from core.checkpoint import checkpoint_problem, load_checkpoint
from harness.cli import app
from harness.execute import plan_study
from harness.plan import DONE, stage_dir
from harness.report._text import markdown_escape
from harness.tracking import names

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
runner = CliRunner()
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
FAST = {"pretrain.epochs": 1, "finetune.epochs": 1}
FINETUNE_ONLY = {"pretrain.enabled": False, "finetune.epochs": 1}


def harness(*args: str):
    """``harness ARGS`` in this process (the CLI's own error handling, no traceback escapes)."""
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def harness_process(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """``python -m harness ARGS`` as a process, stdout and stderr together."""
    return subprocess.run(
        [sys.executable, "-m", "harness", *map(str, args)], cwd=ROOT, env=kwargs.pop("env", ENV),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout, **kwargs,
    )  # fmt: skip


def one_line_error(output: str, *fragments: str) -> None:
    """The output is a short error holding every fragment, with no traceback."""
    flat = " ".join(output.split())  # rich folds long lines
    assert "Traceback" not in output, output[-3000:]
    assert len(output.strip().splitlines()) <= 6, output
    for fragment in fragments:
        assert " ".join(fragment.split()) in flat, (fragment, output)


def child_runs(uri: str, study: str) -> list:
    return [r for r in runs_of(uri, study) if r.data.tags.get(names.TAG_STAGE) != names.STAGE_STUDY]


def finished_per_key(uri: str, study: str) -> dict[tuple[str, str, str], int]:
    counts: dict[tuple[str, str, str], int] = {}
    for run in child_runs(uri, study):
        tags = run.data.tags
        key = (tags[names.TAG_ARM], tags[names.TAG_SEED], tags[names.TAG_STAGE])
        counts[key] = counts.get(key, 0) + (run.info.status == "FINISHED")
    return counts


def holders(run) -> list[str]:
    return [h["workdir"] for h in json.loads(run.data.tags.get(names.TAG_HOLDERS, "[]"))]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One SQLite store for the module's trainings (each study is its own experiment): MLflow
    creates a store's schema in seconds, once is enough."""
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


def stage_hashes(study: Path, *args: str) -> dict[tuple[str, str], str]:
    """(arm label, stage kind) -> stage hash, from the plan."""
    _, plan, _ = plan_study(study, tuple(args))
    return {(run.arm.label, plan.stages[h].kind): h for run in plan.runs for h in run.chain}


# ---------------------------------------------------------------- 1: one store, several workdirs
@pytest.fixture(scope="module")
def shared_store(tmp_path_factory, store):
    """Two `harness run` processes, workdirs A and B, one SQLite store, started 10 s apart."""
    tmp = tmp_path_factory.mktemp("shared")
    study = write_study(tmp, "shared", base=FAST, vary={"model.decoder.depth": [0, 1]})
    uri = store

    def start(work: str) -> subprocess.Popen:
        command = [sys.executable, "-m", "harness", "run", str(study), "--workdir", str(tmp / work), "--tracking-uri", uri, "--quiet"]
        return subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    first = start("A")
    time.sleep(10)
    second = start("B")
    outputs = [proc.communicate(timeout=900)[0] for proc in (first, second)]
    return SimpleNamespace(tmp=tmp, study=study, uri=uri, codes=[first.returncode, second.returncode], outputs=outputs)


@pytest.mark.slow
def test_two_workdirs_started_10s_apart_on_one_store_both_finish_with_one_run_per_stage(shared_store):
    assert shared_store.codes == [0, 0], shared_store.outputs
    for output in shared_store.outputs:
        assert "Traceback" not in output and "FAILED" not in output
    runs = child_runs(shared_store.uri, "shared")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert finished_per_key(shared_store.uri, "shared") == {
        ("shared", "0", "pretrain"): 1, ("depth=0", "0", "finetune"): 1, ("depth=1", "0", "finetune"): 1,
    }  # fmt: skip
    workdirs = {str(shared_store.tmp / "A"), str(shared_store.tmp / "B")}
    for run in runs:
        assert run.info.status == "FINISHED"  # no run was taken over, failed or left KILLED
        assert set(holders(run)) <= workdirs and holders(run)


@pytest.fixture(scope="module")
def rerun_in_c(shared_store):
    """Workdir C adds an arm: its pre-training finished in A or B, so C trains it again, untracked,
    and shares its checkpoint through the store."""
    (shared_store.tmp / "more").mkdir(exist_ok=True)
    study = write_study(shared_store.tmp / "more", "shared", base=FAST, vary={"model.decoder.depth": [2]})
    work = shared_store.tmp / "C"
    result = harness("run", study, "--workdir", work, "--tracking-uri", shared_store.uri, "--quiet", "--share-checkpoints")
    pretrain = stage_hashes(study)[("depth=2", "pretrain")]
    return SimpleNamespace(result=result, study=study, work=work, pretrain=pretrain,
                           best=(stage_dir(work, pretrain) / "best.safetensors").read_bytes())  # fmt: skip


@pytest.mark.slow
def test_a_workdir_lacking_a_finished_stage_trains_it_again_without_a_second_run(shared_store, rerun_in_c):
    assert rerun_in_c.result.exit_code == 0, rerun_in_c.result.output
    folder = stage_dir(rerun_in_c.work, rerun_in_c.pretrain)
    assert (folder / DONE).is_file() and (folder / "last.safetensors").is_file()  # trained here
    (pretrain,) = by_stage(child_runs(shared_store.uri, "shared"), "pretrain")  # still the one run
    assert pretrain.info.status == "FINISHED" and str(rerun_in_c.work) in holders(pretrain)
    assert pretrain.data.tags[names.TAG_CHECKPOINT] == names.ARTIFACT_STAGE
    assert finished_per_key(shared_store.uri, "shared")[("depth=2", "0", "finetune")] == 1


@pytest.fixture(scope="module")
def damaged_in_c(shared_store, rerun_in_c):
    """C's pre-training checkpoint gets one byte flipped; an arm added in C trains on it (and
    fails), then runs again with --retry-failed."""
    folder = stage_dir(rerun_in_c.work, rerun_in_c.pretrain)
    best = folder / "best.safetensors"
    data = bytearray(best.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content
    best.write_bytes(bytes(data))
    trained = (folder / "last.safetensors").stat().st_mtime_ns
    (shared_store.tmp / "damaged").mkdir(exist_ok=True)
    study = write_study(shared_store.tmp / "damaged", "shared", base=FAST, vary={"model.decoder.depth": [4]})
    args = ("run", study, "--workdir", rerun_in_c.work, "--tracking-uri", shared_store.uri, "--quiet")
    failed = harness(*args)
    state = SimpleNamespace(aside=best.with_name("best.safetensors.damaged").is_file(), done=(folder / DONE).exists(),
                            finished=finished_per_key(shared_store.uri, "shared"))  # fmt: skip
    retried = harness(*args, "--retry-failed")
    return SimpleNamespace(best=best, failed=failed, after_failure=state, retried=retried, trained=trained,
                           last_mtime=(folder / "last.safetensors").stat().st_mtime_ns)  # fmt: skip


@pytest.mark.slow
def test_a_damaged_best_checkpoint_is_one_line_and_retry_failed_recovers(shared_store, rerun_in_c, damaged_in_c):
    assert damaged_in_c.failed.exit_code == 1
    flat = " ".join(damaged_in_c.failed.output.split())
    assert f"damaged checkpoint {damaged_in_c.best}: its content does not match the SHA-256 written with it" in flat
    assert f"stage pretrain {rerun_in_c.pretrain}" in flat and "--retry-failed" in flat
    assert "Traceback" not in damaged_in_c.failed.output
    assert damaged_in_c.after_failure.aside and not damaged_in_c.after_failure.done  # reset, kept for a look
    assert damaged_in_c.retried.exit_code == 0, damaged_in_c.retried.output
    assert checkpoint_problem(damaged_in_c.best) is None
    after = finished_per_key(shared_store.uri, "shared")
    assert after == {**damaged_in_c.after_failure.finished, ("depth=4", "0", "finetune"): 1}  # nothing redone


@pytest.mark.slow
def test_a_workdir_fetches_a_shared_checkpoint_instead_of_training_it(shared_store, rerun_in_c, damaged_in_c):
    """The retry above needs C's pre-training again: the store holds its checkpoint (C ran with
    --share-checkpoints), so it is downloaded, not trained."""
    assert damaged_in_c.retried.exit_code == 0, damaged_in_c.retried.output
    assert damaged_in_c.best.read_bytes() == rerun_in_c.best  # the store's copy of C's checkpoint
    assert damaged_in_c.last_mtime == damaged_in_c.trained  # its epoch checkpoint untouched: not trained
    assert len(by_stage(child_runs(shared_store.uri, "shared"), "pretrain")) == 1


# ------------------------------------------------- OOM, full disk, NaN: one arm fails, others stay
OOM_BATCH = 12  # the oom arm's batch size: its forward "runs out of memory"


@pytest.fixture(scope="module")
def failing_arms(tmp_path_factory, store):
    """A study with an arm that runs out of memory, one whose second checkpoint write hits a full
    disk, a NaN arm and a healthy one; run once so, then again with --retry-failed and no faults."""
    tmp = tmp_path_factory.mktemp("failing")
    arms = [
        {"label": "ok", "set": {}},
        {"label": "oom", "set": {"finetune.batch_size": OOM_BATCH}},
        {"label": "disk", "set": {"finetune.epochs": 2}},
        {"label": "nan", "set": {"finetune.align.loss": "triplet", "finetune.align.margin": float("nan")}},
    ]
    study = write_study(tmp, "failing", base=FINETUNE_ONLY, arms=arms)
    uri = store
    work = tmp / "work"
    disk = stage_dir(work, stage_hashes(study)[("disk", "finetune")])
    args = ("run", study, "--workdir", work, "--tracking-uri", uri, "--quiet")
    forward, save_file = core.model.D2SVSE.forward, core.checkpoint.save_file
    writes = []

    def out_of_memory(self, images, *rest, **kw):
        if images.shape[0] == OOM_BATCH:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total capacity)")
        return forward(self, images, *rest, **kw)

    def disk_full(tensors, filename):
        path = Path(filename)
        if path.parent == disk and "last" in path.name:
            writes.append(path)
            if len(writes) == 2:  # epoch 1: half the file lands, then the disk is full
                path.write_bytes(b"\0" * 1000)
                raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return save_file(tensors, filename)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(core.model.D2SVSE, "forward", out_of_memory)
        patch.setattr(core.checkpoint, "save_file", disk_full)
        first = harness(*args)
    state = SimpleNamespace(
        disk_files=sorted(p.name for p in disk.iterdir()), disk_last=load_checkpoint(disk / "last.safetensors")[1],
        runs={(r.data.tags[names.TAG_ARM], r.info.status): r.info.run_id for r in child_runs(uri, "failing")},
        statuses=sorted(r.info.status for r in child_runs(uri, "failing")),
    )  # fmt: skip
    second = harness(*args, "--retry-failed")
    return SimpleNamespace(first=first, second=second, first_state=state, uri=uri, disk=disk)


def _arm_runs(uri: str, arm: str) -> list:
    return sorted((r for r in child_runs(uri, "failing") if r.data.tags[names.TAG_ARM] == arm), key=lambda r: r.info.start_time)


def _failure_line(output: str, arm: str) -> str:
    """The summary's line for a failed arm (rich may have folded it over several lines)."""
    flat = " ".join(output.split())
    start = flat.index(f"FAILED {arm} seed 0:")
    ends = [i for i in (flat.find(" FAILED ", start + 1), flat.find(" Runs: ", start)) if i > 0]
    return flat[start : min(ends, default=len(flat))]


@pytest.mark.slow
def test_out_of_memory_in_one_arm_fails_it_alone_with_a_remedy_and_retry_runs_it(failing_arms):
    assert failing_arms.first.exit_code == 1
    line = _failure_line(failing_arms.first.output, "oom")
    assert "out of memory (CUDA out of memory. Tried to allocate 2.00 GiB" in line
    assert "lower finetune.batch_size" in line and "Traceback" not in failing_arms.first.output
    assert "RUNNING" not in failing_arms.first_state.statuses
    assert ("ok", "FINISHED") in failing_arms.first_state.runs  # the other arms went on
    failed, retried = _arm_runs(failing_arms.uri, "oom")
    trace = mlflow.MlflowClient(failing_arms.uri).download_artifacts(failed.info.run_id, names.ARTIFACT_TRACEBACK)
    assert "OutOfMemoryError" in Path(trace).read_text()  # the traceback is in the FAILED run
    assert (failed.info.status, retried.info.status) == ("FAILED", "FINISHED")
    (ok,) = _arm_runs(failing_arms.uri, "ok")  # not run again
    assert ok.info.run_id == failing_arms.first_state.runs[("ok", "FINISHED")]


@pytest.mark.slow
def test_full_disk_during_a_checkpoint_write_keeps_the_previous_checkpoint_and_retry_resumes(failing_arms):
    line = _failure_line(failing_arms.first.output, "disk")
    assert f"cannot write {failing_arms.disk / 'last.safetensors'}: No space left on device" in line
    assert f"finetune {failing_arms.disk.name}" in line
    # the epoch-0 checkpoint is whole, the half-written file is gone
    assert failing_arms.first_state.disk_last["epoch"] == 0
    assert failing_arms.first_state.disk_files == ["best.json", "best.safetensors", "config.yaml", "last.json", "last.safetensors"]
    failed, retried = _arm_runs(failing_arms.uri, "disk")
    assert (failed.info.status, retried.info.status) == ("FAILED", "FINISHED")
    client = mlflow.MlflowClient(failing_arms.uri)
    speeds = [
        {m.step: m.value for m in client.get_metric_history(run.info.run_id, names.PAIRS_PER_S)} for run in (failed, retried)
    ]
    assert speeds[1][0] == speeds[0][0] and 1 in speeds[1]  # epoch 0 resumed from its checkpoint, not trained again


@pytest.mark.slow
def test_nan_arm_fails_again_with_retry_failed_and_nothing_else_runs_again(failing_arms):
    assert failing_arms.second.exit_code == 1
    assert "NonFiniteLoss" in _failure_line(failing_arms.second.output, "nan")
    assert [r.info.status for r in _arm_runs(failing_arms.uri, "nan")] == ["FAILED", "FAILED"]
    assert "cached" in failing_arms.second.output and "Traceback" not in failing_arms.second.output


# ------------------------------------------------------- Ctrl-C, and a checkpoint truncated after it
def _mid_finetune(work: Path) -> Path | None:
    for last in work.glob("stages/*/last.json"):
        if not (last.parent / DONE).exists():
            return last.parent
    return None


def _sigint_as_in_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, store):
    """`harness run` interrupted with SIGINT (Ctrl-C) once its fine-tuning has an epoch checkpoint."""
    tmp = tmp_path_factory.mktemp("interrupted")
    # Several epochs, so the signal lands while the stage still runs.
    study = write_study(tmp, "interrupted", base={"pretrain.enabled": False, "finetune.epochs": 6})
    uri, work = store, tmp / "work"
    command = [sys.executable, "-m", "harness", "run", str(study), "--workdir", str(work), "--tracking-uri", uri, "--quiet"]
    # A shell without job control starts background commands with SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler: give the child the terminal's default, as Ctrl-C meets it.
    proc = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_sigint_as_in_a_terminal)  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline and _mid_finetune(work) is None:
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    folder = _mid_finetune(work)
    assert folder is not None, f"the fine-tuning finished before SIGINT arrived:\n{output}"
    runs = {r.data.tags[names.TAG_STAGE]: (r.info.status, r.info.run_id) for r in runs_of(uri, "interrupted")}
    return SimpleNamespace(code=proc.returncode, output=output, runs=runs, folder=folder, study=study, uri=uri,
                           work=work, problem=checkpoint_problem(folder / "last.safetensors"))  # fmt: skip


@pytest.mark.slow
def test_ctrl_c_says_what_was_interrupted_and_how_to_resume_and_closes_the_runs_killed(interrupted):
    assert interrupted.code == 130
    flat = " ".join(interrupted.output.split())
    assert "interrupted: study 'interrupted' interrupted while running default seed 0 (finetune -> eval)" in flat
    assert f"resume with: harness run {interrupted.study} --workdir {interrupted.work} --tracking-uri {interrupted.uri}" in flat
    assert "Traceback" not in interrupted.output
    assert interrupted.runs["finetune"][0] == "KILLED" and interrupted.runs["study"][0] == "KILLED"
    assert interrupted.problem is None  # the epoch checkpoint is kept whole


@pytest.mark.slow
def test_a_truncated_last_checkpoint_is_named_set_aside_and_its_stage_restarts(interrupted):
    last = interrupted.folder / "last.safetensors"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a crash mid-write, on a disk without fsync
    done = harness_process("run", interrupted.study, "--workdir", interrupted.work, "--tracking-uri", interrupted.uri, "--quiet")
    assert done.returncode == 0, done.stdout[-3000:]
    warnings = [line for line in done.stdout.splitlines() if "damaged checkpoint" in line]
    assert len(warnings) == 1 and str(last) in warnings[0], done.stdout[-3000:]
    assert f"finetune stage {interrupted.folder.name} restarts from epoch 0" in warnings[0]
    assert last.with_name("last.safetensors.damaged").is_file() and checkpoint_problem(last) is None
    (finetune,) = by_stage(runs_of(interrupted.uri, "interrupted"), "finetune")  # the KILLED run, resumed
    assert (finetune.info.status, finetune.info.run_id) == ("FINISHED", interrupted.runs["finetune"][1])


# ------------------------------------------------------------ 8: two studies share a stage folder
@pytest.mark.slow
def test_two_studies_sharing_a_stage_in_one_workdir_train_it_once(tmp_path, store):
    uri, work = store, tmp_path / "work"
    base = {"pretrain.epochs": 1, "finetune.enabled": False}  # pretrain -> eval, the same in both
    studies = [write_study(tmp_path, name, base=base, arms=[{"label": name, "set": {}}]) for name in ("one", "two")]
    procs = [
        subprocess.Popen([sys.executable, "-m", "harness", "run", str(s), "--workdir", str(work), "--tracking-uri", uri, "--quiet"],
                         cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for s in studies
    ]  # fmt: skip
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    trained = [o for o in outputs if "pretrain epoch 0" in o]
    assert len(trained) == 1, outputs  # the other process waited for the stage's lock, then found it done
    for name in ("one", "two"):
        assert [r.info.status for r in by_stage(runs_of(uri, name), "pretrain")] == ["FINISHED"]


# -------------------------------------------------------------------------- 3: the tracking store
def test_an_unreachable_tracking_server_is_one_line_within_seconds(tmp_path):
    study = write_study(tmp_path, "store", base=FAST)
    port = free_port()  # nothing listens there
    with socket.socket() as silent:  # accepts connections (the kernel's backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        for uri, cause in ((f"http://127.0.0.1:{port}", "Connection refused"), (f"http://127.0.0.1:{silent.getsockname()[1]}", "")):
            started = time.monotonic()
            result = harness("run", study, "--workdir", tmp_path / "work", "--tracking-uri", uri)
            assert result.exit_code == 1
            one_line_error(result.output, f"tracking store {uri}: {cause}")
            assert time.monotonic() - started < 30  # MLflow alone retries for 4 minutes
    assert not (tmp_path / "work" / "stages").exists()


def test_a_tracking_uri_with_an_unknown_scheme_is_one_line(tmp_path):
    result = harness("run", write_study(tmp_path, "bogus", base=FAST), "--workdir", tmp_path / "w", "--tracking-uri", "bogus://x")
    assert result.exit_code == 1
    one_line_error(result.output, "tracking store bogus://x: unknown scheme 'bogus'")


# ------------------------------------------------------------------------------ 4: the workdir
def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "work").write_text("not a folder")
    study = write_study(tmp_path, "file", base=FAST)
    for extra in ((), ("--dry-run",)):
        result = harness("run", study, "--workdir", tmp_path / "work", "--tracking-uri", f"sqlite:///{tmp_path}/m.db", *extra)
        assert result.exit_code == 1
        one_line_error(result.output, f"workdir {tmp_path / 'work'} is a file, not a folder")
    assert (tmp_path / "work").read_text() == "not a folder" and not (tmp_path / "m.db").exists()


def _namespaces(*flags: str) -> bool:
    return shutil.which("unshare") is not None and subprocess.run(["unshare", *flags, "true"], capture_output=True).returncode == 0


@pytest.mark.parametrize("kind", ["unwritable", "read-only"])
def test_an_unwritable_or_read_only_workdir_is_one_line(tmp_path, kind):
    study = write_study(tmp_path, "rights", base=FAST)
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o555)
    command = [sys.executable, "-m", "harness", "run", str(study), "--workdir", str(work), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    if kind == "read-only":  # a read-only tmpfs over the workdir, in a mount namespace of its own
        # no skip: this machine kind (and CI's) has user namespaces; without them the case is untested
        assert _namespaces("-rm"), "needs user namespaces (unshare -rm) to mount a read-only file system"
        command = ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"', str(work), *command]
    elif os.geteuid() == 0:  # root writes through permissions: run as an owner they apply to
        assert _namespaces("--user"), "running as root without user namespaces: permissions cannot be enforced"
        command = ["unshare", "--user", "--map-user=65534", "--map-group=65534", *command]
    try:
        done = subprocess.run(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    finally:
        work.chmod(0o755)
    assert done.returncode == 1
    cause = "Read-only file system" if kind == "read-only" else "Permission denied"
    one_line_error(done.stdout, f"workdir {work} is not writable ({cause})")
    assert not (tmp_path / "m.db").exists() and not any(work.iterdir())


# ------------------------------------------------------------------- 4: files that are not UTF-8
LATIN1 = "caf\xe9 au lait".encode("latin-1")  # 0xe9: not UTF-8


def _prepare(tmp_path: Path, source: str, fixture: dict, **extra: str):
    sets = {"data.source": source, "data.annotations": fixture["annotations"], "data.image_root": fixture["image_root"], **extra}
    return harness("prepare", "--setting", TINY, *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")], "--workdir", tmp_path / "w")


def test_non_utf8_caption_and_annotation_files_are_one_line_naming_the_file(tmp_path, karpathy, laps):  # noqa: F811
    ann = Path(karpathy["annotations"])
    ann.write_bytes(ann.read_bytes().replace(b"caption 0 of 000.png", LATIN1))
    result = _prepare(tmp_path, "karpathy", karpathy)
    assert result.exit_code == 1
    one_line_error(result.output, f"data.annotations {ann}: not UTF-8 text (byte 0xe9")

    caps = Path(laps["annotations"]) / "train_caps.txt"
    caps.write_bytes(caps.read_bytes() + LATIN1 + b"\n")
    result = _prepare(tmp_path, "laps", laps)
    assert result.exit_code == 1
    one_line_error(result.output, f"data.annotations {caps}: not UTF-8 text (byte 0xe9", "line 6")


def test_a_non_utf8_dense_caption_file_or_study_file_is_one_line_naming_it(tmp_path, karpathy):  # noqa: F811
    dense = tmp_path / "dense.jsonl"
    dense.write_bytes(b'{"image": "sub/000.png", "text": "' + LATIN1 + b'"}\n')
    result = _prepare(tmp_path, "karpathy", karpathy, **{"data.dense_captions": str(dense)})
    assert result.exit_code == 1
    one_line_error(result.output, f"data.dense_captions {dense}: not UTF-8 text")
    study = tmp_path / "study.yaml"
    study.write_bytes(b"name: latin\ndescription: " + LATIN1 + b"\n")
    result = harness("run", study, "--dry-run", "--workdir", tmp_path / "w")
    assert result.exit_code == 1
    one_line_error(result.output, f"{study}: not UTF-8 text")


# ------------------------------------------------------------------------------ 5: harness ui
def _processes() -> list[tuple[int, str, int, int]]:
    """(pid, state, parent pid, process group) of every process, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found.append((int(stat.parent.name), fields[0], int(fields[1]), int(fields[2])))
    return found


def _children(pid: int) -> list[int]:
    return [p for p, _, parent, _ in _processes() if parent == pid]


def _group(pgid: int) -> list[int]:
    return [p for p, state, _, group in _processes() if group == pgid and state != "Z"]


@pytest.mark.slow
def test_harness_ui_ends_its_server_on_sigterm_as_on_ctrl_c(store):
    """SIGTERM takes Ctrl-C's road (harness._signals): one real server shows that road's end."""
    port = free_port()
    command = [sys.executable, "-m", "harness", "ui", "--port", str(port), "--tracking-uri", store]
    proc = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ready = next((line for line in proc.stdout if "MLflow UI for" in line), None)  # it answers /health
        assert ready is not None, f"harness ui ended with code {proc.wait()} before the UI answered"
        (server,) = _children(proc.pid)  # the MLflow server: the leader of its own process group
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    deadline = time.time() + 30
    while _group(server) and time.time() < deadline:
        time.sleep(0.2)
    assert _group(server) == []  # no live process of the server's group is left
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


# ------------------------------------------------------------------- 6 and 7: before any work
def test_a_plan_over_the_limit_asks_for_yes_and_1000_arms_plan_in_seconds(tmp_path):
    grid = {"model.decoder.depth": list(range(10)), "model.decoder.num_tokens": list(range(1, 11)),
            "finetune.optim.lr": [round(1e-3 * k, 4) for k in range(1, 11)]}  # fmt: skip
    study = write_study(tmp_path, "huge", vary=grid)
    started = time.monotonic()
    result = harness("run", study, "--workdir", tmp_path / "work", "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    seconds = time.monotonic() - started
    assert result.exit_code == 1
    one_line_error(result.output, "study huge plans 1000 (arm, seed) runs, more than the limit of 500", "--yes")
    assert seconds < 60, seconds  # was minutes; measured ~2 s for a dry run on 2 cores
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "work").exists()
    dry = harness("run", study, "--dry-run", "--workdir", tmp_path / "work")
    assert dry.exit_code == 0 and "(the first 200 of 1001 tasks are shown)" in dry.output
    assert "harness run will ask for --yes" in " ".join(dry.output.split()) and len(dry.output.splitlines()) < 250


@pytest.mark.parametrize(
    "value, message",
    [
        ({"model.image.backbone": "vit_tiny_patch16_24"}, "model.image.backbone: unknown timm model 'vit_tiny_patch16_24'; did you mean vit_tiny_patch16_224"),
        ({"model.image.pretrained": "/no/such/weights.safetensors"}, "model.image.pretrained: /no/such/weights.safetensors not found"),
        ({"model.text.backbone": "/no/such/text-backbone"}, "model.text.backbone: folder /no/such/text-backbone not found"),
        ({"model.text.backbone": "no-such-org/no-such-model"}, "model.text.backbone: 'no-such-org/no-such-model' is not a local folder, a bundled alias"),
        ({"runtime.device": "tpu"}, "runtime.device='tpu' is not a device: use auto, cpu, cuda or cuda:N"),
    ],
    ids=["timm-typo", "image-weights", "text-folder", "text-hub-name", "device"],
)
def test_backbones_weights_and_devices_are_checked_by_the_dry_run(tmp_path, value, message):
    study = write_study(tmp_path, "names", base=FAST, arms=[{"label": "ok", "set": {}}, {"label": "bad", "set": value}])
    result = harness("run", study, "--dry-run", "--workdir", tmp_path / "work")
    assert result.exit_code == 1
    one_line_error(result.output, f"study names, arm 'bad': {message}")
    assert not (tmp_path / "work").exists()


# --------------------------------------------------------------------------------- 10: hygiene
def test_an_arm_label_with_a_control_character_is_refused(tmp_path):
    for arms in ([{"label": "two\nlines", "set": {}}], [{"label": "bell\x07", "set": {}}]):
        result = harness("run", write_study(tmp_path, "labels", arms=arms), "--dry-run", "--workdir", tmp_path / "w")
        assert result.exit_code == 1
        assert "holds the control character U+" in " ".join(result.output.split()) and "Traceback" not in result.output


def test_markdown_escapes_dollars_and_line_breaks():
    assert markdown_escape("cost $5 | a\nb") == r"cost \$5 \| a b"
    assert markdown_escape("$x^2$") == r"\$x\^2\$"


@pytest.mark.parametrize("source", ["karpathy", "laps"])
def test_image_paths_leading_outside_the_image_root_are_refused(tmp_path, karpathy, laps, source):  # noqa: F811
    fixture = karpathy if source == "karpathy" else laps
    ann = Path(fixture["annotations"])
    if source == "karpathy":
        data = json.loads(ann.read_text())
        data["images"][0] |= {"filepath": "../../../../../etc", "filename": "passwd"}
        ann.write_text(json.dumps(data))
        escaping = str(Path(fixture["image_root"]) / "../../../../../etc/passwd")
    else:
        mapping = json.loads((ann / "id_mapping.json").read_text())
        mapping["100"] = "/etc/passwd"
        (ann / "id_mapping.json").write_text(json.dumps(mapping))
        escaping = "/etc/passwd"
    result = _prepare(tmp_path, source, fixture)
    assert result.exit_code == 1
    one_line_error(result.output, f"1 image paths lead outside data.image_root={fixture['image_root']}", escaping)
    assert not (tmp_path / "w" / "data").exists() or not any((tmp_path / "w" / "data").rglob("*.npy"))


# ----------------------------------------- earlier cases that had no test of their own (the others:
# docs/reliability.md names their tests in test_run, test_study and test_config)
@pytest.mark.parametrize(
    "text, message",
    [
        ("name: [unclosed\nvary: {", "invalid YAML"),
        ("name: !!python/object/apply:os.system ['echo pwned > PWNED']\n", "invalid YAML"),
        ("name: range\nbase: {model.text.dropout: 1.5}\n", "model.text.dropout"),
    ],
    ids=["not-yaml", "python-tag", "out-of-range"],
)
def test_study_files_that_are_not_yaml_carry_python_tags_or_out_of_range_values_are_one_line(tmp_path, text, message):
    study = tmp_path / "study.yaml"
    study.write_text(f"setting: {TINY}\n{text}")
    result = harness("run", study, "--workdir", tmp_path / "work", "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert not (ROOT / "PWNED").exists() and not (tmp_path / "PWNED").exists() and not (tmp_path / "m.db").exists()


def test_an_unexpected_error_is_one_line_and_debug_shows_its_traceback(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setattr("harness.execute.plan_study", broken)
    study = write_study(tmp_path, "bug", base=FAST)
    result = harness("run", study, "--dry-run", "--workdir", tmp_path / "w")
    assert result.exit_code == 1
    one_line_error(result.output, "RuntimeError: a bug (unexpected: `harness --debug ...` shows the traceback)")
    debug = runner.invoke(app, ["--debug", "run", str(study), "--dry-run", "--workdir", str(tmp_path / "w")])
    assert isinstance(debug.exception, RuntimeError)  # raised as Python raises it: its traceback is printed
