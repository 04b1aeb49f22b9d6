"""Benchmark of the harness's own overhead: planning, tracking, checkpointing and replay, as a
share of a study's wall time on a CPU setting.

One single-arm study runs through ``run_study`` exactly as ``harness run`` would (fresh workdir
and SQLite store, so the store's one-time schema creation counts; the data cache prepared
beforehand, as ``harness prepare`` would), with the setting's own epochs. The stage records say
how long core's own work took (training and evaluation, minus checkpoint writing); everything
else inside the wall time is the harness's. Importing torch, timm and transformers, which any
training script pays once per process, is timed apart (``import_s``) and not counted.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
import time
from pathlib import Path

import yaml

from core.data import prepare
from harness._local import read_record
from harness.config import resolve
from harness.bench.measure import Figure, figures_json, ratio_check
from harness.execute import run_study
from harness.tracking import default_tracking_uri

__all__ = ["bench_overhead"]

OVERHEAD_TARGET = 0.05  # planning + tracking + checkpointing under 5% of a run (issue 14)
WALL, COMPUTE = "study wall time", "core compute (training + evaluation)"
OVERHEAD, CHECKPOINT = "harness overhead (wall - core compute)", "of which checkpoint writing"


def bench_overhead(setting: str = "cpu-small", epochs: int | None = None) -> dict:
    """Run a one-arm, one-seed study of ``setting`` and split its wall time.

    Args:
        setting: the base setting (name or path).
        epochs: epochs of each of the two training stages (None: the setting's own).
    """
    stage_module = "harness._stages"  # what the executor imports lazily before the first stage
    started = time.perf_counter()
    fresh_import = stage_module not in sys.modules
    importlib.import_module(stage_module)
    import_s = time.perf_counter() - started if fresh_import else 0.0
    config = resolve(setting)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        study = tmp / "overhead.yaml"
        base = {} if epochs is None else {"pretrain.epochs": epochs, "finetune.epochs": epochs}
        study.write_text(yaml.safe_dump({"name": "bench-overhead", "setting": setting, "base": base}))
        workdir = tmp / "work"
        prepare(config.data, workdir / "data")
        started = time.perf_counter()
        result = run_study(study, workdir=workdir, tracking_uri=default_tracking_uri(workdir))
        wall = time.perf_counter() - started
        records = [read_record(workdir, h) for h in result.plan.stages]
    if result.failed:
        raise RuntimeError(f"the benchmark study failed: {result.failed[0].error}")
    compute = sum(r.seconds - r.checkpoint_seconds for r in records)
    checkpoint = sum(r.checkpoint_seconds for r in records)
    figures = {
        WALL: Figure((wall,), "s"),
        COMPUTE: Figure((compute,), "s"),
        OVERHEAD: Figure((wall - compute,), "s"),
        CHECKPOINT: Figure((checkpoint,), "s"),
    }
    return {
        "figures": figures_json(figures),
        "checks": [ratio_check("harness overhead / study wall time", figures[OVERHEAD], figures[WALL], "<", OVERHEAD_TARGET)],
        "notes": [
            "One run (a study of minutes): its figures have one repeat each.",
            "Importing torch, timm and transformers, which any training script pays, is timed apart (import_s) and not counted.",
        ],
        "setting": setting,
        "pretrain_epochs": epochs or config.pretrain.epochs,
        "finetune_epochs": epochs or config.finetune.epochs,
        "import_s": import_s,
    }
