"""Benchmarks of how the harness scales with the number of runs: ``harness report`` over a store
of 1,000 runs, and ``harness run --dry-run`` of a 1,000-arm study.

The store is written through ``harness.tracking.Tracker``, the writer every study uses, so it has
exactly the layout ``harness report`` reads: per study a parent run (arm order, baseline, the
study file), one pre-training run per seed and one fine-tuning run per (arm, seed) with the
flattened config as params, per-epoch ``train/*``, ``lr`` and ``val/*`` metrics, final ``test/*``
metrics, the config and the per-query ranks as artifacts. Metric values are computed from random
ranks by ``core.metrics.metrics_from_ranks``, so the tables and the bootstrap read consistent
numbers; nothing is trained. Provenance is that of a clean checkout (no git diff artifact).

Both commands run as a user runs them, in a child process, so their times include starting
Python and importing what they import.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from core.errors import UserError
from core.metrics import metrics_from_ranks
from core.stages import FINETUNE, PRETRAIN
from harness.bench.endtoend import run_timed
from harness.bench.measure import ISSUE, Figure, check, figures_json
from harness.config import DEFAULT_SETTING, config_to_yaml, flatten, resolve
from harness.study import expand_arms, load_study
from harness.tracking import RunKey, Tracker, default_tracking_uri, init_store, names, provenance

__all__ = ["bench_report", "bench_dry_run", "write_store"]

REPORT_TARGET_S = 10.0  # harness report over 1,000 runs (issue 14)
DRY_RUN_TARGET_S = 5.0  # harness run --dry-run of a 1,000-arm study (issue 14)
_DRY_RUN_KEYS = ("model.decoder.depth", "model.decoder.num_tokens", "finetune.distill.weight")


def write_store(
    uri: str, studies: int, arms: int, seeds: int, epochs: int = 3, seed: int = 0
) -> int:
    """Write ``studies`` studies of ``arms`` x ``seeds`` fine-tuning runs plus one pre-training
    run per seed into the store at ``uri``; returns the number of stage runs written. Ranks have
    the sizes of the default setting's splits (validation per epoch, test once per run), so the
    report bootstraps what a real store of that setting holds.

    Args:
        uri: the tracking URI (created if absent).
        studies: studies (experiments).
        arms: arms per study (a decoder-depth grid ``depth=0 .. arms-1``).
        seeds: seeds per study.
        epochs: logged epochs per run.
        seed: seeds the random ranks.
    """
    init_store(uri)
    clean = {**provenance(), "git_dirty": False, "git_diff": ""}
    tracker = Tracker(uri, provenance=clean)
    rng = np.random.default_rng(seed)
    config = resolve(DEFAULT_SETTING)
    sizes = config.data.synthscenes
    val_split, test_split = (sizes.num_val, sizes.captions_per_image), (sizes.num_test, sizes.captions_per_image)
    params, config_text = flatten(config), config_to_yaml(config)
    written = 0
    with tempfile.TemporaryDirectory() as tmp:
        ranks_file = Path(tmp) / names.ARTIFACT_RANKS
        for s in range(studies):
            study = _study_file(f"scale_{s:03d}", arms, seeds)
            labels = [arm.label for arm in expand_arms(load_study(_write(Path(tmp) / "study.yaml", study)))]
            parent = tracker.study_run(study["name"], study["description"])
            tracker.set_tags(parent, {names.TAG_ARM_ORDER: json.dumps(labels), names.TAG_BASELINE: labels[0]})
            tracker.log_artifact_text(parent, names.ARTIFACT_STUDY, yaml.safe_dump(study, sort_keys=False))
            for run_seed in range(seeds):
                pretrain = tracker.start_run(RunKey(study["name"], "shared", run_seed, PRETRAIN.name, _hash(rng)), parent, params)
                _log_epochs(tracker, pretrain, epochs, rng, val_split)
                tracker.end_run(pretrain)
                written += 1
                for label in labels:
                    run = tracker.start_run(RunKey(study["name"], label, run_seed, FINETUNE.name, _hash(rng)), parent, params, pretrain_run_id=pretrain)
                    tracker.log_artifact_text(run, names.ARTIFACT_CONFIG, config_text)
                    _log_epochs(tracker, run, epochs, rng, val_split)
                    i2t, t2i = _ranks(rng, *test_split)
                    tracker.log_metrics(run, {names.test_metric(k): v for k, v in metrics_from_ranks(i2t, t2i).items()}, step=0)
                    np.savez(ranks_file, i2t=i2t, t2i=t2i)
                    tracker.log_artifact_file(run, ranks_file)
                    tracker.end_run(run)
                    written += 1
            tracker.end_run(parent)
    return written


def bench_report(studies: int = 10, arms: int = 19, seeds: int = 5, repeats: int = 3) -> dict[str, Any]:
    """Time ``harness report`` over a store of ``studies x seeds x (arms + 1)`` runs.

    Args:
        studies: studies in the store.
        arms: arms per study.
        seeds: seeds per study (each also has one pre-training run).
        repeats: runs of ``harness report``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        uri = default_tracking_uri(tmp / "work")
        started = time.perf_counter()
        runs = write_store(uri, studies, arms, seeds)
        generation = time.perf_counter() - started
        command = [sys.executable, "-m", "harness", "report", "--out", str(tmp / "reports"), "--tracking-uri", uri]
        walls = [_run(command, tmp / "report.log") for _ in range(repeats)]
        tables = len(list((tmp / "reports").glob("*/table.md")))
    sizes = resolve(DEFAULT_SETTING).data.synthscenes
    figures = {"harness report": Figure(tuple(walls), "s"), "writing the store (Tracker)": Figure((generation,), "s")}
    return {
        "figures": figures_json(figures),
        "checks": [check(f"harness report over {runs} runs, wall time", figures["harness report"].median, "<", REPORT_TARGET_S, "s", ISSUE)],
        "notes": [
            f"A store of {studies} studies, each {arms} arms x {seeds} seeds of fine-tuning runs plus {seeds} pre-training"
            f" runs: {runs} stage runs, written through Tracker; each fine-tuning run's test ranks cover {sizes.num_test}"
            f" images x {sizes.captions_per_image} captions ({DEFAULT_SETTING}'s test split). `harness report` wrote"
            f" {tables} tables (and their plots).",
        ],
        "runs": runs,
        "studies": studies,
        "arms": arms,
        "seeds": seeds,
    }


def bench_dry_run(grid: Sequence[int] = (10, 10, 10), repeats: int = 3) -> dict[str, Any]:
    """Time ``harness run STUDY --dry-run`` of a study whose grid has ``prod(grid)`` arms.

    Args:
        grid: values per varied key (decoder depth, decoder tokens, distillation weight).
        repeats: runs of the command.
    """
    if not 1 <= len(grid) <= len(_DRY_RUN_KEYS) or min(grid) < 1:
        raise UserError(f"grid: 1 to {len(_DRY_RUN_KEYS)} positive sizes, got {tuple(grid)}")
    values = {
        "model.decoder.depth": list(range(grid[0])),
        "model.decoder.num_tokens": [4 * (i + 1) for i in range(grid[1] if len(grid) > 1 else 0)],
        "finetune.distill.weight": [round(0.1 * (i + 1), 3) for i in range(grid[2] if len(grid) > 2 else 0)],
    }
    vary = {key: values[key] for key in _DRY_RUN_KEYS[: len(grid)]}
    arms = int(np.prod(grid))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        study = _write(tmp / "dry_run.yaml", {"name": "dry_run_scale", "setting": DEFAULT_SETTING, "vary": vary, "seeds": [0]})
        command = [sys.executable, "-m", "harness", "run", str(study), "--dry-run", "--workdir", str(tmp / "work")]
        walls = [_run(command, tmp / "dry_run.log") for _ in range(repeats)]
        summary = (tmp / "dry_run.log").read_text().strip().splitlines()[-1]
    figures = {"harness run --dry-run": Figure(tuple(walls), "s")}
    return {
        "figures": figures_json(figures),
        "checks": [check(f"harness run --dry-run of {arms} arms, wall time", figures["harness run --dry-run"].median, "<", DRY_RUN_TARGET_S, "s", ISSUE)],
        "notes": [f"A {' x '.join(map(str, grid))} grid over {', '.join(vary)} on {DEFAULT_SETTING}, one seed; its plan: {summary}"],
        "arms": arms,
        "grid": list(grid),
    }


def _run(command: list[str], log: Path) -> float:
    wall, _, code = run_timed(command, log)
    if code:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise RuntimeError(f"`{' '.join(command)}` exited with {code}:\n{tail}")
    return wall


def _study_file(name: str, arms: int, seeds: int) -> dict[str, Any]:
    return {
        "name": name,
        "description": "A generated study for the report-scale benchmark.",
        "setting": DEFAULT_SETTING,
        "vary": {"model.decoder.depth": list(range(arms))},
        "seeds": list(range(seeds)),
        "baseline": "depth=0",
        "report": {"metrics": ["rsum", "i2t_r1", "t2i_r1"], "plot": "line", "x": "model.decoder.depth"},
    }


def _write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _hash(rng: np.random.Generator) -> str:
    return rng.bytes(8).hex()


def _ranks(rng: np.random.Generator, n_images: int, captions_per_image: int) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks, mostly small (a trained model's), as ``(n_images,)`` and ``(n_texts,)``."""
    n_texts = n_images * captions_per_image
    i2t = np.minimum(rng.geometric(0.3, n_images) - 1, n_texts - captions_per_image)
    t2i = np.minimum(rng.geometric(0.2, n_texts) - 1, n_images - 1)
    return i2t, t2i


def _log_epochs(tracker: Tracker, run: str, epochs: int, rng: np.random.Generator, split: tuple[int, int]) -> None:
    for epoch in range(epochs):
        val = metrics_from_ranks(*_ranks(rng, *split))
        losses = {names.TRAIN_LOSS: float(rng.uniform(1, 3)), names.train_metric("align_loss"): float(rng.uniform(1, 3))}
        rates = {names.LR: 1e-3, names.PAIRS_PER_S: float(rng.uniform(100, 200))}
        tracker.log_metrics(run, {**losses, **rates, **{names.val_metric(k): v for k, v in val.items()}}, step=epoch)
