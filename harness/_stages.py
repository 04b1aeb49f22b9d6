"""Running one stage: training (pretrain / finetune) or the test evaluation, in this process or
on several processes under torch's launcher (:mod:`harness._rank`).

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
from core.files import atomic_write_text
from core.runtime import init_distributed, world
from core.stages import BEST_CHECKPOINT, STAGES
from core.train import Event, load_model, train_stage
from harness import _nodes, _rank
from harness._local import StageOutputs
from harness._rank import Launch
from harness.plan import StageRecord
from harness.tracking import names

__all__ = ["run_stage", "run_here", "splits_for"]

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
    launch: Launch = Launch(),
) -> StageOutputs:
    """Run ``stage`` into ``out_dir`` (resuming a partial one) and return its record: in this
    process, or on ``launch.world_size`` processes started by torch's launcher."""
    config = _on_device(stage.config, device)
    splits_for(config, workdir)  # the data cache, prepared once before any rank opens it
    started = time.perf_counter()
    if launch.world_size > 1:
        record = _run_launched(stage, config, out_dir, parent_dir, workdir, on_event, launch)
    else:
        record = run_here(config, stage.kind, out_dir, parent_dir, workdir, on_event)
    return dataclasses.replace(record, seconds=time.perf_counter() - started)


def run_here(
    config: Config, kind: str, out_dir: Path, parent_dir: Path | None, workdir: Path, on_event: Callable[[Any], None]
) -> StageOutputs:
    """The stage's work in this process (one rank of a launched stage, or the only process)."""
    splits = splits_for(config, workdir)
    init_from = parent_dir / BEST_CHECKPOINT if parent_dir is not None else None
    if not STAGES[kind].trains:
        return _evaluate_test(config, init_from, out_dir, splits)

    # the trainer speaks bare names; from here on its metrics carry the store's names
    def named(event: Any) -> None:
        on_event(dataclasses.replace(event, metrics=names.epoch_metrics(event.metrics)))

    result = train_stage(config, kind, out_dir, init_from=init_from, callback=named, splits=splits)
    history = [names.epoch_metrics(epoch) for epoch in result.history]
    return StageOutputs(history, result.best_metrics, result.best_epoch, checkpoint_seconds=result.checkpoint_seconds)


def _run_launched(
    stage: StageRecord,
    config: Config,
    out_dir: Path,
    parent_dir: Path | None,
    workdir: Path,
    on_event: Callable[[Any], None],
    launch: Launch,
) -> StageOutputs:
    """The stage under ``python -m torch.distributed.run``; rank 0's events are forwarded to
    ``on_event`` as they come (an exception from it, a pruned trial's, stops the ranks)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (_rank.EVENTS_FILE, _rank.RESULT_FILE, _rank.ERROR_FILE):
        (out_dir / name).unlink(missing_ok=True)
    spec = {
        "config": config.model_dump_json(), "kind": stage.kind, "out_dir": str(out_dir),
        "parent_dir": str(parent_dir) if parent_dir else None, "workdir": str(workdir),
    }  # fmt: skip
    atomic_write_text(out_dir / _rank.LAUNCH_FILE, json.dumps(spec))
    master_port = _nodes.announce(launch, out_dir / _rank.LAUNCH_FILE)  # the other nodes start theirs
    with open(out_dir / _rank.LOG_FILE, "a", encoding="utf-8") as log:
        ranks = _rank.start_launcher(launch, out_dir / _rank.LAUNCH_FILE, log, master_port)
        code = None
        try:
            read = 0
            while True:
                code = ranks.poll()
                read = _forward_events(out_dir / _rank.EVENTS_FILE, read, on_event)
                if code is not None:
                    break
                _nodes.check_followers(launch)
                time.sleep(0.2)
        except BaseException:  # a stopped trial, Ctrl-C: the ranks must not outlive the task
            if code is None:
                _rank.stop_launcher(ranks)
            raise
    if code != 0 or not (out_dir / _rank.RESULT_FILE).is_file():
        failure = _rank.rank_failure(out_dir)
        if failure is not None:  # a damaged checkpoint resets its stage, out of memory names a remedy
            raise failure
        tail = "\n".join((out_dir / _rank.LOG_FILE).read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
        raise RuntimeError(f"{stage.kind} on {launch.world_size} processes: the launcher exited with {code}; the end of {out_dir / _rank.LOG_FILE}:\n{tail}")
    outputs = StageOutputs.from_json((out_dir / _rank.RESULT_FILE).read_text(encoding="utf-8"))
    for name in (_rank.EVENTS_FILE, _rank.RESULT_FILE):  # handed on; launch.json and the log stay
        (out_dir / name).unlink()
    return outputs


def _forward_events(path: Path, read: int, on_event: Callable[[Any], None]) -> int:
    """Hand on the whole lines appended to ``path`` since byte ``read``; returns the new offset."""
    if not path.is_file():
        return read
    with open(path, "rb") as events:
        events.seek(read)
        chunk = events.read()
    whole = chunk[: chunk.rfind(b"\n") + 1]
    for line in whole.decode("utf-8").splitlines():
        on_event(Event(**json.loads(line)))
    return read + len(whole)


def _evaluate_test(config: Config, checkpoint: Path | None, out_dir: Path, splits: dict[str, Split]) -> StageOutputs:
    """The test split, once, at the selected checkpoint; per-query ranks saved for significance."""
    if checkpoint is None:
        raise ValueError("the eval stage needs a trained parent stage")
    device = init_distributed(config.runtime.device)
    result = evaluate(load_model(config, checkpoint, device), splits["test"], config, device=device)
    if world()[0] != 0:  # every rank has the whole result; rank 0 writes it
        return StageOutputs()
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
