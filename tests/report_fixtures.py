"""A SQLite MLflow store laid out exactly as design.md's "Tracking store layout", for the report
and UI tests: experiment = study, a parent run tagged ``harness.stage=study`` (arm order,
baseline, ``study.yaml``), one pre-training run per seed, one finetune run per (arm, seed) nested
under the parent, per-epoch ``val/<metric>`` with step = epoch, final ``test/<metric>`` and the
per-query ranks artifact.

Every number is computed by ``core.metrics.metrics_from_ranks`` from synthetic per-query ranks,
so the table's values and the paired bootstrap (which reads the ranks) agree. An arm's ranks are
a seed's shared latent ranks scaled by the arm's factor (smaller is better): by construction
``depth=2`` beats ``depth=4`` beats ``depth=1`` beats ``depth=0`` on every query.

Import the fixtures from a test module: ``from report_fixtures import report_store``.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from core.metrics import metrics_from_ranks
from harness.tracking import names

N_IMAGES, CAPTIONS_PER_IMAGE, EPOCHS = 120, 2, 3
T0 = 1_700_000_000_000  # start times (ms), so run order is explicit

DEPTH_STUDY = "depth_study"
DEPTH_YAML = textwrap.dedent(
    """\
    name: depth_study
    description: Decoder depth, a fixture study.
    setting: cpu-small
    vary:
      model.decoder.depth: [0, 1, 2, 4]
    seeds: [0, 1, 2]
    baseline: depth=0
    reference:
      depth=0: {i2t_r1: 70.0, t2i_r1: 55.0, rsum: 480.0}
      depth=4: {i2t_r1: 75.5, t2i_r1: 58.25, rsum: 495.0}
    reference_source: made-up numbers standing in for a paper's table
    report:
      metrics: [rsum, i2t_r1, t2i_r1]
      plot: line
      x: model.decoder.depth
    """
)
DEPTH_FACTORS = {"depth=0": 1.0, "depth=1": 0.7, "depth=2": 0.45, "depth=4": 0.55}
DEPTH_VALUES = {"depth=0": 0, "depth=1": 1, "depth=2": 2, "depth=4": 4}
DEPTH_FAILED = ("depth=4", 2)  # FAILED after one epoch: traceback, no test metrics, no ranks
DEPTH_MISSING = ("depth=1", 1)  # never ran
DEPTH_RETRIED = ("depth=2", 0)  # an older FAILED attempt, then a FINISHED retry
DEPTH_REPLAYED = ("depth=0", 0)  # val/rsum at epoch 1 logged twice (a resumed run): the later counts

ESCAPE_STUDY = "label_escapes"
ESCAPE_LABELS = ("l2_norm", "50% tokens", "a & b #1", "~x^2\\y")
ESCAPE_YAML = textwrap.dedent(
    """\
    name: label_escapes
    description: Arm labels that need escaping in LaTeX.
    setting: cpu-small
    arms:
      - {label: l2_norm, set: {finetune.distill.metric: l2}}
      - {label: "50% tokens", set: {model.decoder.num_tokens: 4}}
      - {label: "a & b #1", set: {}}
      - {label: "~x^2\\\\y", set: {}}
    seeds: [0]
    baseline: l2_norm
    report:
      plot: bar
    """
)
ESCAPE_FACTORS = dict(zip(ESCAPE_LABELS, (1.0, 0.8, 0.6, 1.2)))


@dataclass
class FixtureStore:
    """The filled store and what went into it (the tests check the report against these)."""

    uri: str
    parents: dict[str, str] = field(default_factory=dict)  # study -> parent run id
    runs: dict[tuple[str, str, int], str] = field(default_factory=dict)  # the FINISHED (study, arm, seed) runs
    failed: dict[tuple[str, str, int], str] = field(default_factory=dict)  # the FAILED ones
    ranks: dict[tuple[str, str, int], dict[str, np.ndarray]] = field(default_factory=dict)
    test: dict[tuple[str, str, int], dict[str, float]] = field(default_factory=dict)  # test metrics
    val: dict[tuple[str, str, int], list[dict[str, float]]] = field(default_factory=dict)  # per epoch


def latent_ranks(seed: int, salt: int = 0) -> dict[str, np.ndarray]:
    """A seed's shared latent ranks (0-based) for both directions."""
    rng = np.random.default_rng(1000 * seed + salt)
    return {
        "i2t": rng.geometric(0.08, N_IMAGES) - 1,
        "t2i": rng.geometric(0.05, N_IMAGES * CAPTIONS_PER_IMAGE) - 1,
    }


def arm_ranks(latent: dict[str, np.ndarray], factor: float) -> dict[str, np.ndarray]:
    """Ranks of an arm: the latent ranks scaled by ``factor`` (smaller is better), capped."""
    caps = {"i2t": N_IMAGES * CAPTIONS_PER_IMAGE - 1, "t2i": N_IMAGES - 1}
    return {d: np.minimum(np.floor(r * factor).astype(np.int64), caps[d]) for d, r in latent.items()}


def fill_store(root: Path) -> FixtureStore:
    """Create ``root/mlflow.db`` with the two fixture studies."""
    root.mkdir(parents=True, exist_ok=True)
    store = FixtureStore(uri=f"sqlite:///{(root / 'mlflow.db').as_posix()}")
    writer = _Writer(MlflowClient(tracking_uri=store.uri), root / "mlartifacts", store)
    writer.study(DEPTH_STUDY, DEPTH_YAML, DEPTH_FACTORS, seeds=(0, 1, 2), baseline="depth=0")
    writer.study(ESCAPE_STUDY, ESCAPE_YAML, ESCAPE_FACTORS, seeds=(0,), baseline="l2_norm")
    return store


@pytest.fixture(scope="session")
def report_store(tmp_path_factory: pytest.TempPathFactory) -> FixtureStore:
    """The filled fixture store, shared by the session: tests must only read it."""
    return fill_store(tmp_path_factory.mktemp("report_store"))


class _Writer:
    def __init__(self, client: MlflowClient, artifacts: Path, store: FixtureStore):
        self.client, self.artifacts, self.store = client, artifacts, store
        self.clock = T0

    def _create(self, experiment: str, tags: dict[str, str], name: str) -> str:
        self.clock += 1000
        return self.client.create_run(experiment, start_time=self.clock, tags=tags, run_name=name).info.run_id

    def study(self, study: str, text: str, factors: dict[str, float], seeds: tuple[int, ...], baseline: str) -> None:
        experiment = self.client.create_experiment(study, artifact_location=(self.artifacts / study).as_uri())
        arms = list(factors)
        parent = self._create(experiment, {names.TAG_STUDY: study, names.TAG_STAGE: names.STAGE_STUDY}, study)
        self.client.set_tag(parent, names.TAG_ARM_ORDER, json.dumps(arms))
        self.client.set_tag(parent, names.TAG_BASELINE, baseline)
        self.client.log_text(parent, text, names.ARTIFACT_STUDY)
        self.store.parents[study] = parent
        for seed in seeds:
            common = {**_common_tags(study, seed), names.TAG_PARENT_RUN_ID: parent}
            pretrain = self._create(
                experiment, {**common, names.TAG_ARM: ", ".join(arms), names.TAG_STAGE: names.STAGE_PRETRAIN},
                f"pretrain seed={seed}",
            )
            # A pre-training has val metrics too: the report must not take them for an arm's.
            self._log_epochs(pretrain, [{"train/loss": 2.0 - e / 10, "val/rsum": 100.0 + e} for e in range(EPOCHS)])
            self.client.set_terminated(pretrain, "FINISHED", end_time=self.clock + 500)
            for arm in arms:
                key = (study, arm, seed)
                if (arm, seed) == DEPTH_MISSING and study == DEPTH_STUDY:
                    continue
                tags = {**common, names.TAG_ARM: arm, names.TAG_STAGE: "finetune", names.TAG_PRETRAIN_RUN_ID: pretrain}
                if (arm, seed) == DEPTH_RETRIED and study == DEPTH_STUDY:
                    self.store.failed[key] = self._failed_run(experiment, tags, arm, seed, factors[arm], epochs=0)
                if (arm, seed) == DEPTH_FAILED and study == DEPTH_STUDY:
                    self.store.failed[key] = self._failed_run(experiment, tags, arm, seed, factors[arm], epochs=1)
                    continue
                self.store.runs[key] = self._finished_run(experiment, tags, key, factors[arm])
        # As the executor does: the parent ends FAILED when any of its runs failed.
        self.client.set_terminated(parent, "FAILED" if study == DEPTH_STUDY else "FINISHED", end_time=self.clock + 600)

    def _finished_run(self, experiment: str, tags: dict[str, str], key: tuple[str, str, int], factor: float) -> str:
        study, arm, seed = key
        run = self._create(experiment, tags, f"{arm} seed={seed} finetune")
        self.client.log_batch(run, params=[Param(k, v) for k, v in _params(arm).items()])
        val = _val_history(seed, factor)
        self._log_epochs(run, [{"train/loss": 1.0 - e / 10, "lr": 1e-4, **_prefixed("val", m)} for e, m in enumerate(val)])
        if (arm, seed) == DEPTH_REPLAYED and study == DEPTH_STUDY:
            # The first attempt's value at epoch 1 is stale; the replay (logged later) counts.
            self.client.log_metric(run, "val/rsum", -1.0, timestamp=self.clock + 1, step=1)
            self.client.log_metric(run, "val/rsum", val[1]["rsum"], timestamp=self.clock + 2, step=1)
        ranks = arm_ranks(latent_ranks(seed), factor)
        test = metrics_from_ranks(ranks["i2t"], ranks["t2i"])
        self.client.log_batch(run, metrics=[Metric(f"test/{k}", v, self.clock, 0) for k, v in test.items()])
        self.client.log_text(run, "model: {}\n", names.ARTIFACT_CONFIG)
        self.client.log_artifact(run, _npz(self.artifacts.parent, ranks), None)
        self.client.set_terminated(run, "FINISHED", end_time=self.clock + 500)
        self.store.ranks[key], self.store.test[key], self.store.val[key] = ranks, test, val
        return run

    def _failed_run(self, experiment: str, tags: dict[str, str], arm: str, seed: int, factor: float, epochs: int) -> str:
        run = self._create(experiment, tags, f"{arm} seed={seed} finetune")
        self._log_epochs(run, [_prefixed("val", m) for m in _val_history(seed, factor)[:epochs]])
        self.client.log_text(run, "Traceback (most recent call last):\nFloatingPointError: loss is nan\n", names.ARTIFACT_TRACEBACK)
        self.client.set_terminated(run, "FAILED", end_time=self.clock + 500)
        return run

    def _log_epochs(self, run: str, epochs: list[dict[str, float]]) -> None:
        metrics = [Metric(k, v, self.clock + e, e) for e, values in enumerate(epochs) for k, v in values.items()]
        if metrics:
            self.client.log_batch(run, metrics=metrics)


def _common_tags(study: str, seed: int) -> dict[str, str]:
    return {
        names.TAG_STUDY: study,
        names.TAG_SEED: str(seed),
        names.TAG_CONFIG_HASH: f"hash{seed}",
        names.TAG_GIT_COMMIT: "0123abc",
        names.TAG_GIT_DIRTY: "false",
    }


def _params(arm: str) -> dict[str, str]:
    return {"model.decoder.depth": str(DEPTH_VALUES.get(arm, 1)), "finetune.epochs": str(EPOCHS)}


def _val_history(seed: int, factor: float) -> list[dict[str, float]]:
    """Validation metrics per epoch, from the val latent ranks, improving with the epoch."""
    latent = latent_ranks(seed, salt=1)
    history = []
    for epoch in range(EPOCHS):
        ranks = arm_ranks(latent, factor * (1 + 0.5 * (EPOCHS - 1 - epoch)))
        history.append(metrics_from_ranks(ranks["i2t"], ranks["t2i"]))
    return history


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in metrics.items()}


def _npz(folder: Path, ranks: dict[str, np.ndarray]) -> str:
    path = folder / "staging" / names.ARTIFACT_RANKS
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **ranks)
    return str(path)
