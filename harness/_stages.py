"""Running one stage in this process: training (pretrain / finetune) or the test evaluation.

Imported lazily by the executor so that planning, dry runs and the scheduler never load torch
models. A stage writes its outputs into its own folder and returns a JSON-able record
(``history``: per-epoch metrics, ``best``: validation metrics at the selected epoch, ``final``:
test metrics) that the executor keeps beside them for replay.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core.config import Config
from core.data import Split, build_splits
from core.evaluate import evaluate
from core.runtime import resolve_device
from core.stages import BEST_CHECKPOINT, STAGES
from core.train import load_model, train_stage
from harness._local import StageOutputs
from harness.plan import StageRecord
from harness.tracking import names

__all__ = ["run_stage", "splits_for"]

# per process: one opened data cache per (workdir, data section); the workdir is part of the key
# because the splits memory-map files under it (another workdir's may be gone)
_SPLITS: dict[tuple[str, str], dict[str, Split]] = {}


def splits_for(config: Config, workdir: Path) -> dict[str, Split]:
    """The data splits of ``config.data`` (prepared under ``workdir/data`` once, then reused in
    this process for the same workdir)."""
    key = (str(Path(workdir).resolve()), json.dumps(config.data.model_dump(mode="json"), sort_keys=True))
    if key not in _SPLITS:
        _SPLITS[key] = build_splits(config.data, Path(workdir) / "data")
    return _SPLITS[key]


def _on_device(config: Config, device: str | None) -> Config:
    if device is None:
        return config
    return config.model_copy(update={"runtime": config.runtime.model_copy(update={"device": device})})


def run_stage(
    stage: StageRecord,
    out_dir: Path,
    parent_dir: Path | None,
    workdir: Path,
    device: str | None,
    on_event: Callable[[Any], None],
) -> StageOutputs:
    """Run ``stage`` into ``out_dir`` (resuming a partial one) and return its record."""
    config = _on_device(stage.config, device)
    splits = splits_for(config, workdir)
    init_from = parent_dir / BEST_CHECKPOINT if parent_dir is not None else None
    started = time.perf_counter()
    if not STAGES[stage.kind].trains:
        record = _evaluate_test(config, init_from, out_dir, splits)
    else:
        # the trainer speaks bare names; from here on its metrics carry the store's names
        def named(event: Any) -> None:
            on_event(dataclasses.replace(event, metrics=names.epoch_metrics(event.metrics)))

        result = train_stage(config, stage.kind, out_dir, init_from=init_from, callback=named, splits=splits)
        history = [names.epoch_metrics(epoch) for epoch in result.history]
        record = StageOutputs(history, result.best_metrics, result.best_epoch, checkpoint_seconds=result.checkpoint_seconds)
    return dataclasses.replace(record, seconds=time.perf_counter() - started)


def _evaluate_test(config: Config, checkpoint: Path | None, out_dir: Path, splits: dict[str, Split]) -> StageOutputs:
    """The test split, once, at the selected checkpoint; per-query ranks saved for significance."""
    if checkpoint is None:
        raise ValueError("the eval stage needs a trained parent stage")
    device = resolve_device(config.runtime.device)
    result = evaluate(load_model(config, checkpoint, device), splits["test"], config, device=device)
    out_dir.mkdir(parents=True, exist_ok=True)
    if result.fold_metrics is not None and config.eval.test_on == "folds":
        # the fold protocol is the result: its means, and ranks within folds for the bootstrap
        i2t, t2i = result.fold_ranks
        np.savez(out_dir / names.ARTIFACT_RANKS, i2t=i2t, t2i=t2i)
        return StageOutputs(final={names.test_metric(k): v for k, v in result.fold_metrics.items()})
    np.savez(out_dir / names.ARTIFACT_RANKS, i2t=result.i2t_ranks, t2i=result.t2i_ranks)
    final = {names.test_metric(k): v for k, v in result.metrics.items()}
    if result.fold_metrics is not None:  # COCO: 5K over the whole split, 1K as the 5-fold mean
        final |= {names.test_metric(k, "test5k"): v for k, v in result.metrics.items()}
        final |= {names.test_metric(k, "test1k"): v for k, v in result.fold_metrics.items()}
    return StageOutputs(final=final)
