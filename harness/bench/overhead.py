"""Benchmark of the harness's own overhead: planning, tracking, checkpointing and replay, as a
share of a study's wall time on a CPU setting.

One single-arm study runs through ``run_study`` exactly as ``harness run`` would (fresh workdir
and SQLite store; the data cache prepared beforehand, as ``harness prepare`` would). The stage
records say how long core's own work took (training and evaluation, minus checkpoint writing);
everything else inside the wall time is the harness's.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import yaml

from core.data import prepare
from harness.config import resolve
from harness.execute import run_study
from harness.plan import stage_dir
from harness.tracking import default_tracking_uri

__all__ = ["bench_overhead"]


def bench_overhead(setting: str = "cpu-small", epochs: int = 1) -> dict:
    """Run a one-arm, one-seed study of ``setting`` and split its wall time.

    Args:
        setting: the base setting (name or path).
        epochs: epochs of each of the two training stages.
    """
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        study = tmp / "overhead.yaml"
        base = {"pretrain.epochs": epochs, "finetune.epochs": epochs}
        study.write_text(yaml.safe_dump({"name": "bench-overhead", "setting": setting, "base": base}))
        workdir = tmp / "work"
        prepare(resolve(setting).data, workdir / "data")
        started = time.perf_counter()
        result = run_study(study, workdir=workdir, tracking_uri=default_tracking_uri(workdir))
        wall = time.perf_counter() - started
        records = [json.loads((stage_dir(workdir, h) / "record.json").read_text()) for h in result.plan.stages]
    if result.failed:
        raise RuntimeError(f"the benchmark study failed: {result.failed[0].error}")
    compute = sum(r["seconds"] - r.get("checkpoint_seconds", 0.0) for r in records)
    checkpoint = sum(r.get("checkpoint_seconds", 0.0) for r in records)
    return {
        "setting": setting,
        "epochs_per_stage": epochs,
        "wall_s": wall,
        "core_compute_s": compute,
        "checkpoint_s": checkpoint,
        "overhead_s": wall - compute,
        "overhead_share": (wall - compute) / wall,
    }
