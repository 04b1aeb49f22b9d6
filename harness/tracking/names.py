"""Every name the harness writes to MLflow, in one place (design.md, "Tracking store layout")."""

from collections.abc import Mapping
from typing import Any

from core import metric_keys
from core.stages import PRETRAIN

__all__ = [
    "TAG_STUDY", "TAG_ARM", "TAG_SEED", "TAG_STAGE", "TAG_CONFIG_HASH", "TAG_PRETRAIN_RUN_ID",
    "TAG_GIT_COMMIT", "TAG_GIT_DIRTY", "TAG_PARENT_RUN_ID", "METRICS", "train_metric", "val_metric",
    "test_metric", "epoch_metrics", "VAL_PREFIX", "TRAIN_LOSS", "LR", "PAIRS_PER_S",
    "ARTIFACT_CONFIG", "ARTIFACT_RANKS", "ARTIFACT_TRACEBACK", "ARTIFACT_GIT_DIFF",
    "STAGE_STUDY", "STAGE_PRETRAIN", "TAG_ARM_ORDER", "TAG_BASELINE", "TAG_SEEDS", "ARTIFACT_STUDY", "ARTIFACT_FIGURES",
    "STAGE_SWEEP", "TAG_TRIAL", "TAG_TRIAL_STATE", "TAG_TRIAL_PARAMS", "TAG_TRIAL_VALUE", "TAG_REQUEUE_OF",
    "TRIAL_STATES", "TAG_OBJECTIVE", "TAG_DIRECTION", "TAG_SAMPLER", "TAG_PRUNER", "TAG_STORAGE",
    "TAG_BEST_PARAMS", "TAG_BEST_TRIAL", "BEST_VALUE", "ARTIFACT_SWEEP", "trial_label",
    "TAG_OWNER", "TAG_HEARTBEAT", "TAG_HOLDERS", "TAG_CHECKPOINT", "ARTIFACT_STAGE",
    "TAG_VERSION", "TAG_CUDA", "TAG_DEVICE",
]

TAG_STUDY = "harness.study"
TAG_ARM = "harness.arm"
TAG_SEED = "harness.seed"
TAG_STAGE = "harness.stage"  # pretrain | finetune | study
TAG_CONFIG_HASH = "harness.config_hash"
TAG_PRETRAIN_RUN_ID = "harness.pretrain_run_id"
TAG_GIT_COMMIT = "git.commit"
TAG_GIT_DIRTY = "git.dirty"
TAG_PARENT_RUN_ID = "mlflow.parentRunId"  # MLflow's own nesting tag
# Provenance beyond git: package versions, the CUDA build, the device that ran the stage.
TAG_VERSION = "harness.version.{}"  # .format(package): python, torch, timm, transformers, mlflow
TAG_CUDA = "harness.cuda"
TAG_DEVICE = "harness.device"  # the GPU's name or the CPU; a worker's --devices entry overrides it
STAGE_STUDY = "study"  # harness.stage of the study's parent run
STAGE_PRETRAIN = PRETRAIN.name  # harness.stage of a shared pre-training run
# On the parent run, so that `harness report` needs nothing but the store:
TAG_ARM_ORDER = "harness.arm_order"  # JSON list of arm labels, in the study's order
TAG_BASELINE = "harness.baseline"  # the arm the others are compared with
TAG_SEEDS = "harness.seeds"  # JSON list: the seeds the last `harness run` asked for (--seeds or the file's)
# Ownership of a stage run (docs/reliability.md): who runs it now, and where its outputs are.
TAG_OWNER = "harness.owner"  # JSON {host, pid, pidns, token}: the process running the run (while RUNNING)
TAG_HEARTBEAT = "harness.heartbeat"  # unix seconds, refreshed by the owner while it runs the run
TAG_HOLDERS = "harness.holders"  # JSON list of {host, workdir} whose stages/<hash>/ hold the outputs
TAG_CHECKPOINT = "harness.checkpoint"  # the artifact folder holding the stage's checkpoint, when logged
ARTIFACT_STAGE = "stage"  # that folder: best.safetensors, best.json, record.json (--share-checkpoints)

# Retrieval metric keys, recalls in percent: core's, logged as val/<key> and test/<key>.
METRICS = metric_keys.METRICS
TRAIN_LOSS = "train/loss"
LR = "lr"
PAIRS_PER_S = "train/pairs_per_s"


def train_metric(term: str) -> str:
    """A loss term's per-epoch metric: ``align_loss`` -> ``train/align_loss``."""
    return f"train/{term}"


def val_metric(metric: str) -> str:
    return f"val/{metric}"


VAL_PREFIX = val_metric("")  # every validation metric's name starts with it


def epoch_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """A trainer epoch record in bare names (``{"train": {term: v}, "val": {metric: v}, "lr": v}``,
    :data:`core.train.EpochRecord`) as metric names: ``train/<term>``, ``val/<metric>``, ``lr``."""
    out = {train_metric(term): float(value) for term, value in record.get("train", {}).items()}
    out |= {val_metric(metric): float(value) for metric, value in record.get("val", {}).items()}
    if "lr" in record:
        out[LR] = float(record["lr"])
    # epochs a stage checkpointed before the trainer spoke bare names (resumed now): named already
    out |= {name: float(value) for name, value in record.items() if "/" in name}
    return out


def test_metric(metric: str, split: str = "test") -> str:
    """``test/<metric>``; COCO also ``test5k/<metric>`` and ``test1k/<metric>`` (5-fold mean)."""
    return f"{split}/{metric}"


ARTIFACT_CONFIG = "config.yaml"
ARTIFACT_RANKS = "ranks.npz"  # per-query ranks of the test evaluation: i2t (n_images,), t2i (n_texts,)
ARTIFACT_TRACEBACK = "traceback.txt"
ARTIFACT_GIT_DIFF = "git.diff"
ARTIFACT_STUDY = "study.yaml"  # the study file, on the parent run
ARTIFACT_FIGURES = "figures"  # folder of the report's plots, on the parent run

# Sweeps (`harness sweep --optuna`): experiment = sweep name; the parent run is tagged
# harness.stage=sweep; each trial is a harness run (arm = trial_label, its own stage tags) nested
# under it, plus the sweep's shared pre-training runs.
STAGE_SWEEP = "sweep"  # harness.stage of a sweep's parent run
TAG_TRIAL = "harness.trial"  # the Optuna trial number (the latest, for a trial re-queued after its worker died)
TAG_TRIAL_STATE = "harness.trial_state"  # one of TRIAL_STATES
TRIAL_STATES = ("running", "complete", "pruned", "failed")
TAG_TRIAL_PARAMS = "harness.trial_params"  # JSON {dotted.key: value}: the sampled values, typed
TAG_TRIAL_VALUE = "harness.trial_value"  # the objective Optuna was told (a complete trial)
TAG_REQUEUE_OF = "harness.requeue_of"  # the trial number this trial re-runs (dead worker, --retry-failed)
# On the sweep's parent run:
TAG_OBJECTIVE = "harness.objective"  # val/<metric>
TAG_DIRECTION = "harness.direction"  # maximize | minimize
TAG_SAMPLER = "harness.sampler"  # JSON: the sampler's name, class, every constructor setting, optuna version
TAG_PRUNER = "harness.pruner"  # JSON: the same for the pruner
TAG_STORAGE = "harness.storage"  # the Optuna storage (password removed)
TAG_BEST_PARAMS = "harness.best_params"  # JSON {dotted.key: value}
TAG_BEST_TRIAL = "harness.best_trial"
BEST_VALUE = "best/value"  # metric, step = number of finished trials
ARTIFACT_SWEEP = "sweep.yaml"  # the sweep spec, on the parent run


def trial_label(number: int) -> str:
    """The arm label of a trial's runs: ``trial 7``."""
    return f"trial {number}"
