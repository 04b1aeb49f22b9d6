"""Benchmark of pruning: the same sweep with the median pruner and with none.

Both sweeps run through ``run_sweep`` exactly as ``harness sweep --optuna`` would, each in a
fresh workdir, store and journal (so each trains its own pre-training; the data cache is prepared
beforehand, as ``harness prepare`` would). The trials are longer and cheaper than the default
sweep's: more fine-tuning epochs (a pruner saves only the epochs after the one it stops at, so 3
epochs with one of warm-up leave it at most a third) on a scaled-down training split (the
validation split, which the objective and the pruner read, keeps its size). The sampler is
seeded per trial number, so the two sweeps start from the same trials; they part once the pruner stops one. Reported for each: the
fine-tuning epochs trained (the epochs each trial reported to Optuna), the wall time, and the best
validation objective; then the share of epochs the pruned sweep trained and the gap between the
two best values, beside the spread of the unpruned sweep's complete trials for scale.
Target: pruning trains at most 60% of the epochs for a best value within that noise.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import yaml
from optuna.trial import TrialState

from core.config import Config
from core.data import prepare
from core.errors import UserError
from harness.bench._data import scaled_splits
from harness.bench.measure import check
from harness.config import load_yaml, resolve
from harness.sweep import DEFAULT_SPEC, run_sweep
from harness.sweep._storage import superseded
from harness.tracking import default_tracking_uri

__all__ = ["bench_sweep"]

SOURCE = "issue 10"  # the sweep issue set these targets


def bench_sweep(
    spec: str | Path = DEFAULT_SPEC,
    n_trials: int = 12,
    pruners: tuple[str, ...] = ("median", "none"),
    epochs: int | None = 6,
    data_scale: float = 0.125,
) -> dict:
    """Run the sweep once per pruner and compare epochs, wall time and best value.

    Args:
        spec: the sweep spec (default: ``studies/sweep.yaml``, on ``cpu-small``).
        n_trials: trials of each sweep.
        pruners: pruner names; the spec's own pruner arguments are kept for its own pruner.
        epochs: fine-tuning epochs per trial (the learning-rate decay epochs scaled alike);
            None: the spec's.
        data_scale: the share of the training and test splits kept (1: the setting's).
    """
    spec = Path(spec)
    raw = load_yaml(spec)
    setting, base = _setting(raw, spec), [("sweep base", raw.get("base", {}))]
    written = resolve(setting, layers=base)
    overrides = {**_longer_trials(written, epochs), **scaled_splits(written, data_scale, ("num_train", "num_test"), "bench_sweep")}
    sets = tuple(f"{key}={json.dumps(value)}" for key, value in overrides.items())
    config = resolve(setting, sets, layers=base)  # what every trial of both sweeps runs on
    result: dict = {"spec": str(spec), "setting": raw.get("setting", "cpu-small"), "n_trials": n_trials,
                    "finetune_epochs_per_trial": overrides.get("finetune.epochs", written.finetune.epochs),
                    "data_scale": data_scale}  # fmt: skip
    values: dict[str, list[float]] = {}
    for pruner in pruners:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            variant = _variant(raw, setting, pruner, n_trials)
            path = tmp / f"{variant['name']}.yaml"
            path.write_text(yaml.safe_dump(variant, sort_keys=False))
            workdir = tmp / "work"
            prepare(config.data, workdir / "data")
            started = time.perf_counter()
            run = run_sweep(path, workdir=workdir, tracking_uri=default_tracking_uri(workdir), overrides=sets)
            wall = time.perf_counter() - started
        trials = [t for t in run.trials if t.number not in superseded(run.trials) and t.state.is_finished()]
        complete = [t.value for t in trials if t.state == TrialState.COMPLETE]
        values[pruner] = complete
        result |= {
            f"{pruner}_finetune_epochs": sum(len(t.intermediate_values) for t in trials),
            f"{pruner}_pretrain_epochs": config.pretrain.epochs if config.pretrain.enabled else 0,
            f"{pruner}_complete": len(complete),
            f"{pruner}_pruned": sum(t.state == TrialState.PRUNED for t in trials),
            f"{pruner}_failed": sum(t.state == TrialState.FAIL for t in trials),
            f"{pruner}_wall_s": wall,
            f"{pruner}_best_value": run.best.value if run.best else None,
        }
    if len(pruners) == 2:
        pruned, unpruned = pruners
        result["epochs_share"] = result[f"{pruned}_finetune_epochs"] / max(1, result[f"{unpruned}_finetune_epochs"])
        result["wall_share"] = result[f"{pruned}_wall_s"] / result[f"{unpruned}_wall_s"]
        if result[f"{pruned}_best_value"] is not None and result[f"{unpruned}_best_value"] is not None:
            result["best_gap"] = result[f"{unpruned}_best_value"] - result[f"{pruned}_best_value"]
        spread = values[unpruned]
        result["unpruned_value_sd"] = sd = statistics.stdev(spread) if len(spread) > 1 else None
        gap = result.get("best_gap")
        no_gap = "" if gap is not None else "a sweep finished no trial"
        result["checks"] = [
            check(f"{pruned} / {unpruned} pruner: fine-tuning epochs trained", result["epochs_share"], "<=", 0.6, source=SOURCE),
            check(
                f"best value gap ({unpruned} - {pruned}), against the sd of the {unpruned} sweep's trials",
                gap if sd is not None else None, "<=", sd if sd is not None else 0.0, source=SOURCE,
                note=no_gap or ("" if sd is not None else "fewer than 2 complete unpruned trials: no spread"),
            ),
        ]
        result["notes"] = [
            f"{n_trials} trials per sweep, `run_sweep` as `harness sweep --optuna` runs it, each sweep in a fresh"
            " workdir (its own pre-training) with the data cache prepared first; one repeat (minutes long).",
            f"Every trial with --set {', '.join(sets)}: longer trials than the default sweep's on less data"
            " (validation split as the setting has it)." if sets else "Trials as the spec has them.",
        ]
    return result


def _longer_trials(config: Config, epochs: int | None) -> dict[str, object]:
    """``finetune.epochs`` and its decay epochs scaled alike (none when ``epochs`` is None)."""
    if epochs is None or epochs == config.finetune.epochs:
        return {}
    if epochs < 1:
        raise UserError(f"bench_sweep: epochs must be at least 1, got {epochs}")
    scale = epochs / config.finetune.epochs
    decay = sorted({min(epochs - 1, max(1, round(e * scale))) for e in config.finetune.optim.decay_epochs})
    return {"finetune.epochs": epochs, "finetune.optim.decay_epochs": decay}


def _setting(raw: dict, spec: Path) -> str:
    """The spec's setting, a relative YAML path made absolute (the variant is written elsewhere)."""
    setting = raw.get("setting", "cpu-small")
    if Path(setting).suffix in (".yaml", ".yml") and not Path(setting).is_absolute():
        setting = str((spec.parent / setting).resolve())
    return setting


def _variant(raw: dict, setting: str, pruner: str, n_trials: int) -> dict:
    """The spec with this pruner, trial count and setting (:func:`_setting`), named apart."""
    variant = dict(raw)
    own = raw.get("pruner", {})
    own_name = own if isinstance(own, str) else own.get("name", "median")
    args = own.get("args", {}) if isinstance(own, dict) and own_name == pruner else {}
    variant.update(
        name=f"bench-{raw['name']}-{pruner}", setting=setting, n_trials=n_trials, pruner={"name": pruner, "args": args}
    )
    variant.pop("timeout", None)
    return variant
