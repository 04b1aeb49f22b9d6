"""The benchmark suite: each benchmark on tiny inputs returns its figures and its checks against
targets, and the writer renders every record (with or without targets). Nothing here asserts a
speed: the numbers of a real run are in reports/benchmarks/benchmarks.md."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from core.errors import UserError
from harness.bench import suite
from harness.bench._data import scaled_splits
from harness.bench.endtoend import MAIN_JOB, MAIN_JOB_ARGS, MAIN_REPORT_ARGS, bench_end_to_end, run_timed
from harness.bench.machine import NO_GPU, machine_info
from harness.bench.measure import Figure, check, ratio_check, timed
from harness.bench.overhead import bench_overhead
from harness.bench.retrieval import bench_retrieval
from harness.bench.scale import bench_dry_run, bench_report
from harness.bench.sharing import DEFAULT_STUDY, bench_sharing, stage_counts
from harness.bench.throughput import ImageFiles, bench_throughput
from harness.bench.writer import REPORT, load_records, render_markdown, write_record
from harness.config import DEFAULT_SETTING, resolve
from harness.plan import make_plan
from harness.study import load_study

TINY = Path(__file__).parent / "data" / "tiny.yaml"


def _tiny_study(tmp_path: Path, depths=(0, 1), epochs: int = 1) -> Path:
    study = {
        "name": "bench-tiny",
        "setting": str(TINY),
        "base": {"pretrain.epochs": epochs, "finetune.epochs": epochs},
        "vary": {"model.decoder.depth": list(depths)},
        "seeds": [0],
    }
    path = tmp_path / "tiny_study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _check(result: dict, prefix: str) -> dict:
    found = [c for c in result["checks"] if c["name"].startswith(prefix)]
    assert len(found) == 1, [c["name"] for c in result["checks"]]
    return found[0]


def _median(result: dict, figure: str) -> float:
    return result["figures"][figure]["median"]


# ---------------------------------------------------------------------------- measuring
def test_figure_is_the_median_of_its_repeats_with_min_and_max():
    fig = Figure((3.0, 1.0, 2.0, 10.0), "s")
    assert fig.to_json() == {"median": 2.5, "min": 1.0, "max": 10.0, "repeats": 4, "unit": "s", "values": [3.0, 1.0, 2.0, 10.0]}
    with pytest.raises(UserError, match="at least one measured value"):
        Figure((), "s")


def test_timed_runs_the_work_once_per_repeat():
    calls = []
    result, fig = timed(lambda: calls.append(1) or len(calls), repeats=3)
    assert result == 3 and fig.to_json()["repeats"] == 3 and fig.min >= 0


def test_check_says_whether_the_target_is_met_and_refuses_unknown_operators():
    assert check("wall", 4.0, "<", 5.0, "s")["met"] is True
    assert check("wall", 6.0, "<", 5.0, "s")["met"] is False
    missing = check("memory", None, "<", 1.0, "MiB", note="not measured: no /proc")
    assert missing["met"] is None and missing["note"].startswith("not measured")
    with pytest.raises(UserError, match="needs a note"):
        check("memory", None, "<", 1.0)
    with pytest.raises(UserError, match="unknown target operator '=<'"):
        check("wall", 1.0, "=<", 5.0)


def test_ratio_check_divides_the_medians_and_refuses_mixed_units():
    slow, fast = Figure((10.0, 12.0, 30.0), "s"), Figure((1.0, 2.0, 3.0), "s")
    ratio = ratio_check("speed-up", slow, fast, ">=", 10.0)
    assert ratio["value"] == pytest.approx(6.0) and ratio["met"] is False
    with pytest.raises(UserError, match="ratio of s to MiB"):
        ratio_check("nonsense", slow, Figure((1.0,), "MiB"), ">=", 1.0)


# ------------------------------------------------------------------------------- writing
def test_machine_info_names_the_cpu_model_and_says_when_there_is_no_gpu(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU @ 1.00GHz\n\nprocessor\t: 1\nmodel name\t: Test CPU @ 1.00GHz\n")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    info = machine_info(cpuinfo=cpuinfo)
    assert info["cpu"] == "Test CPU @ 1.00GHz" and info["gpu"] == NO_GPU
    assert info["torch"] == torch.__version__ and info["cores"] >= 1


def test_report_lists_every_check_with_its_target_and_keeps_a_result_without_targets(tmp_path):
    timed_record = {
        "benchmark": "alpha",
        "command": "harness bench alpha",
        "date": "2026-01-01 00:00",
        "seconds": 3.0,
        "machine": {"cpu": "Test CPU", "gpu": NO_GPU},
        "result": {
            "figures": {"fast": Figure((1.0, 2.0, 3.0), "s").to_json()},
            "checks": [check("fast path wall time", 2.0, "<", 1.5, "s")],
            "notes": ["a reduced run"],
            "size": 40,
        },
    }
    flat_record = {**timed_record, "benchmark": "beta", "command": "harness bench beta", "result": {"epochs_share": 0.5},
                   "machine": {**timed_record["machine"], "git_dirty": True}}  # fmt: skip
    write_record(tmp_path, timed_record)
    write_record(tmp_path, flat_record)
    (tmp_path / "notes.json").write_text("[1, 2]")  # not a record: skipped
    assert [r["benchmark"] for r in load_records(tmp_path)] == ["alpha", "beta"]
    text = (tmp_path / REPORT).read_text()
    assert "| alpha | fast path wall time | 2 s | < 1.5 s | **no** | issue 14 |" in text
    assert "| fast | 2 | 1 | 3 | 3 | s |" in text
    assert "| beta | (the result states no target) |" in text and "| epochs_share | 0.5 |" in text
    assert "- a reduced run" in text and "GPU: none was available" in text
    assert "The records differ in git_dirty: the table is the first record's" in text  # the same machine otherwise
    assert json.loads((tmp_path / "alpha.json").read_text())["result"]["size"] == 40


def test_run_benchmarks_writes_each_record_and_passes_the_device_only_to_those_that_take_it(tmp_path, monkeypatch):
    seen = {}

    def with_device(device: str = "cpu") -> dict:
        seen["device"] = device
        return {"checks": [check("ok", 1.0, "==", 1.0)]}

    monkeypatch.setattr(suite, "BENCHMARKS", {"with-device": with_device, "plain": lambda: {"value": 1.0}})
    paths = suite.run_benchmarks([], tmp_path, device="cuda:1", isolate=False)
    assert [p.name for p in paths] == ["with-device.json", "plain.json", "suite.json"] and seen["device"] == "cuda:1"
    records = {r["benchmark"]: r for r in load_records(tmp_path)}
    assert records["with-device"]["command"] == "harness bench with-device --device cuda:1"
    assert records["plain"]["command"] == "harness bench plain" and records["plain"]["seconds"] >= 0
    assert "| with-device | ok | 1 | == 1 | yes |" in (tmp_path / REPORT).read_text()
    with pytest.raises(UserError, match=r"unknown benchmark \['nope'\]; known: with-device, plain"):
        suite.run_benchmarks(["nope"], tmp_path)


def test_the_whole_suite_records_its_wall_time_against_the_30_minute_target(tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "BENCHMARKS", {"a": lambda: {"value": 1.0}, "b": lambda: {"value": 2.0}})
    suite.run_benchmarks([], tmp_path, isolate=False)
    record = {r["benchmark"]: r for r in load_records(tmp_path)}["suite"]
    (total,) = record["result"]["checks"]
    assert total["op"] == "<=" and total["target"] == 30 * 60 and total["met"] is True and total["unit"] == "s"
    assert set(record["result"]["seconds"]) == {"a", "b"} and total["value"] >= sum(record["result"]["seconds"].values())
    assert record["command"] == "harness bench"
    suite.run_benchmarks(["a"], tmp_path / "one", isolate=False)  # one benchmark by name: no suite record
    assert [r["benchmark"] for r in load_records(tmp_path / "one")] == ["a"]


def test_run_benchmarks_runs_each_benchmark_in_its_own_process(tmp_path, monkeypatch):
    monkeypatch.setattr(suite, "BENCHMARKS", {"pid": _child_pid})
    suite.run_benchmarks(["pid"], tmp_path)
    assert load_records(tmp_path)[0]["result"]["pid"] != os.getpid()


def _child_pid() -> dict:
    return {"pid": os.getpid()}


def test_every_benchmark_is_registered_by_name():
    assert {"retrieval", "overhead", "throughput", "sharing", "report", "dry-run", "e2e"} <= set(suite.BENCHMARKS)


# ---------------------------------------------------------------------------- benchmarks
def test_retrieval_benchmark_compares_both_protocols_with_the_reference_and_measures_memory():
    result = bench_retrieval(n_images=40, captions_per_image=3, dim=16, n_folds=4, repeats=2, reference_repeats=1, large_images=60, large_repeats=2)
    for protocol in ("40", "4-fold 10"):
        speedup = _check(result, f"{protocol} speed-up")
        assert speedup["value"] == pytest.approx(_median(result, f"{protocol} loop reference") / _median(result, f"{protocol} core.metrics"))
        assert _check(result, f"{protocol} metrics identical")["met"] is True
    assert _check(result, "40 + 4-fold 10 peak extra memory")["value"] >= 0
    large = _check(result, "60 x 180 peak extra memory")
    assert large["met"] is True and result["large"]["n_texts"] == 180 and len(result["large"]["seconds"]) == 2
    assert set(result["metrics"]) == {"40", "4-fold 10"} and result["n_texts"] == 120


def test_retrieval_benchmark_skips_the_large_matrix_without_the_memory_for_it(monkeypatch):
    from harness.bench import retrieval

    monkeypatch.setattr(retrieval, "_available_mb", lambda: 0.001)
    result = bench_retrieval(n_images=20, captions_per_image=2, dim=8, n_folds=2, repeats=1, reference_repeats=1, large_images=100)
    large = _check(result, "100 x 200 peak extra memory")
    assert large["value"] is None and large["met"] is None and large["note"].startswith("not measured")


def test_retrieval_benchmark_rejects_images_that_do_not_split_into_folds():
    with pytest.raises(UserError, match="n_images=42 does not split into n_folds=5"):
        bench_retrieval(n_images=42)


def test_image_files_decode_to_the_cached_pixels(tmp_path):
    from PIL import Image

    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    files = ImageFiles([tmp_path / "a.png"])
    assert len(files) == 1 and np.array_equal(files[0], image)


def test_throughput_benchmark_times_cache_files_and_methods_with_the_real_trainer():
    result = bench_throughput(str(TINY), repeats=1, num_train=16, num_val=8, formats=("png",), variants=("plain VSE",), warmup=0)
    assert set(result["figures"]) == {"D2S-VSE, uint8 cache", "D2S-VSE, PNG files", "plain VSE, uint8 cache"}
    cache = _check(result, "uint8 cache / PNG files")
    assert cache["value"] == pytest.approx(_median(result, "D2S-VSE, uint8 cache") / _median(result, "D2S-VSE, PNG files"))
    method = _check(result, "D2S-VSE / plain VSE")
    assert method["value"] == pytest.approx(_median(result, "D2S-VSE, uint8 cache") / _median(result, "plain VSE, uint8 cache"))
    assert result["pairs_per_epoch"] == 32 and all(f["unit"] == "pairs/s" for f in result["figures"].values())
    with pytest.raises(UserError, match=r"unknown image format \['gif'\]"):
        bench_throughput(str(TINY), formats=("gif",))


def test_stage_counts_of_the_decoder_depth_study_with_three_seeds_are_three_pretrainings_instead_of_twelve():
    counts = stage_counts(make_plan(load_study(DEFAULT_STUDY, seeds=(0, 1, 2))))
    assert counts["shared"]["pretrain"] == 3 and counts["scratch"]["pretrain"] == 12
    assert counts["shared"]["finetune"] == counts["scratch"]["finetune"] == 12


def test_scaled_splits_keep_a_batch_of_training_images_and_whole_test_folds():
    config = resolve(DEFAULT_SETTING)  # 1000 / 200 / 3000 images, batch 32, 200-image test folds
    assert scaled_splits(config, 0.125) == {
        "data.synthscenes.num_train": 125, "data.synthscenes.num_val": 25, "data.synthscenes.num_test": 200,
    }  # fmt: skip
    assert scaled_splits(config, 0.01, ("num_train", "num_test")) == {
        "data.synthscenes.num_train": 32, "data.synthscenes.num_test": 200,
    }  # fmt: skip
    with pytest.raises(UserError, match="data_scale must be in"):
        scaled_splits(config, 0.0)


def test_sharing_benchmark_counts_stages_and_times_a_real_shared_run(tmp_path):
    # 0 epochs: the stages evaluate only; data_scale 0.5: a data section no other test of this
    # process runs (harness._stages caches splits per data section, whatever the workdir)
    result = bench_sharing(_tiny_study(tmp_path, epochs=0), seeds=(0,), data_scale=0.5)
    assert _check(result, "pre-trainings executed, shared")["value"] == 1
    assert _check(result, "pre-trainings executed, from scratch")["value"] == 2
    saving = _check(result, "wall time saving")
    scratch = _median(result, "from scratch: compute, every arm x seed chain")
    assert saving["value"] == pytest.approx(scratch / _median(result, "shared: harness run wall time"))
    one_pretrain = _median(result, "one pretrain stage")
    assert scratch == pytest.approx(_median(result, "shared: compute, each distinct stage once") + one_pretrain)
    assert result["stages_scratch"] == {"pretrain": 2, "finetune": 2, "eval": 2}


def test_end_to_end_benchmark_times_harness_run_then_its_report_in_child_processes(tmp_path):
    result = bench_end_to_end(_tiny_study(tmp_path, depths=(0,)), args=("--quiet",))
    wall = _check(result, "wall time on")
    assert wall["value"] == _median(result, "wall time") and wall["target"] == 600.0
    parts = _median(result, "of which harness run"), _median(result, "of which harness report")
    assert min(parts) > 0 and sum(parts) == pytest.approx(wall["value"])
    assert result["runs"] == 1 and _median(result, "peak resident memory") > 0


def test_run_timed_reports_a_failing_command_by_its_exit_code(tmp_path):
    _, peak, code = run_timed(["python3", "-c", "import sys; print('x'); sys.exit(3)"], tmp_path / "log")
    assert code == 3 and peak > 0 and (tmp_path / "log").read_text() == "x\n"


def test_report_benchmark_writes_a_store_and_times_harness_report_over_it():
    result = bench_report(studies=1, arms=2, seeds=1, repeats=1)
    assert result["runs"] == 3  # 2 fine-tunings + 1 pre-training
    timed_check = _check(result, "harness report over 3 runs")
    assert timed_check["value"] == _median(result, "harness report") and timed_check["target"] == 10.0


def test_dry_run_benchmark_times_the_plan_of_a_grid_study():
    result = bench_dry_run(grid=(2, 2), repeats=1)
    assert result["arms"] == 4 and "4 (arm, seed) runs" in result["notes"][0]
    assert _check(result, "harness run --dry-run of 4 arms")["target"] == 5.0
    with pytest.raises(UserError, match="positive sizes"):
        bench_dry_run(grid=(0,))


@pytest.mark.slow
def test_overhead_benchmark_accounts_for_the_whole_wall_time():
    result = bench_overhead(str(TINY), epochs=1)
    assert result["pretrain_epochs"] == result["finetune_epochs"] == 1
    wall, compute = _median(result, "study wall time"), _median(result, "core compute (training + evaluation)")
    overhead, checkpoint = _median(result, "harness overhead (wall - core compute)"), _median(result, "of which checkpoint writing")
    assert 0 < compute < wall and overhead == pytest.approx(wall - compute)
    assert 0 < checkpoint < overhead
    assert _check(result, "harness overhead / study wall time")["value"] == pytest.approx(overhead / wall)


def test_the_end_to_end_benchmark_times_the_readmes_main_job_command():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    command = " ".join(["harness run", f"studies/{MAIN_JOB.name}", *MAIN_JOB_ARGS, "&& harness report", MAIN_JOB.stem, *MAIN_REPORT_ARGS])
    assert f"pip install -e . && {command}\n" in readme
