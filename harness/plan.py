"""Planning: a study -> the stages to run, each with a content hash, shared where they agree.

A run (one arm, one seed) is a chain of stages ``pretrain -> finetune -> eval`` (test evaluation
at the checkpoint chosen on val). A stage's hash covers exactly the config fields its result
depends on (:data:`core.stages.STAGES`' ``fields``) plus its parent's hash, so stages that agree on those are one
stage: a decoder-depth ablation runs one pre-training per seed. It also covers what the config
names but does not hold: the data's content (:func:`core.data.data_fingerprint`: a rewritten
caption file at the same path is new data) and the precision ``auto`` stands for on this machine
(resolved into the run's config before hashing, so what runs is what was hashed). :func:`make_plan` is pure (it only
reads setting files, through ``resolve``); :func:`stage_status` looks at the working directory.

On disk a stage lives in ``<workdir>/stages/<hash>/``; the executor writes the ``DONE`` marker
last (:func:`mark_done`), so a folder with checkpoints but no marker is an interrupted stage.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from core.config import Config
from core.data import data_fingerprint
from core.errors import UserError
from core.stages import LAST_CHECKPOINT, STAGES, StageName, enabled_stages
from harness.config import flatten
from harness.study import Arm, Study, arm_config, expand_arms

__all__ = [
    "StageStatus",
    "NEUTRAL_FIELDS",
    "StageRecord",
    "RunRecord",
    "Plan",
    "make_plan",
    "stage_chain",
    "resolve_auto_precision",
    "hashed_fields",
    "stage_hash",
    "stage_dir",
    "mark_done",
    "stage_status",
    "DONE",
]

StageStatus = Literal["done", "partial", "todo"]

# Fields that change how fast or how verbosely a stage runs, never what it computes. The device
# changes only floating-point rounding (the design treats a CPU and a GPU result as the same stage).
NEUTRAL_FIELDS: frozenset[str] = frozenset(
    {"runtime.device", "runtime.fused_adamw", "runtime.log_every_steps", "data.num_workers", "eval.batch_size"}
)
# Bump when a change to the trainer makes old stage outputs wrong for the same config.
HASH_VERSION = 2
HASH_LENGTH = 16  # hex digits: 64 bits, no collision among any realistic number of stages

DONE = "DONE"  # the marker file written last when a stage finishes


@dataclass(frozen=True)
class StageRecord:
    """One stage to run once, shared by every (arm label, seed) in ``users``.

    ``config`` is the first user's resolved config; every user agrees with it on the fields
    this stage hashes."""

    kind: StageName
    hash: str
    parent: str | None
    config: Config
    users: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class RunRecord:
    """One (arm, seed): its resolved config and its chain of stage hashes, parents first."""

    arm: Arm
    seed: int
    config: Config
    chain: tuple[str, ...]
    config_hash: str  # the last stage's hash: the whole run's identity


@dataclass(frozen=True)
class Plan:
    """A study's runs (seed-major, arms in study order) and its distinct stages, parents first."""

    study: Study
    runs: tuple[RunRecord, ...]
    stages: dict[str, StageRecord]


def make_plan(study: Study, overrides: Iterable[str] | Mapping[str, Any] = (), device: str | None = None) -> Plan:
    """Expand a study into runs and de-duplicated stages (pure: nothing is written).

    Runs are ordered seed-major (every arm of seed 0, then of seed 1, ...) so that an interrupted
    study already holds complete comparisons for its first seeds.

    Args:
        study: a validated study.
        overrides: ``--set`` items (``KEY=VALUE`` strings or a mapping), applied to every arm last.
        device: the device the stages will run on (``--devices``), where it replaces
            ``runtime.device`` (precision ``auto`` is resolved for it).

    Raises:
        UserError: a bad key or value in any arm (naming the arm), or an arm with both stages
            disabled; raised before anything runs.
    """
    runs: list[RunRecord] = []
    first: dict[str, tuple[StageName, str | None, Config]] = {}
    users: dict[str, list[tuple[str, int]]] = {}
    fingerprints: dict[str, str] = {}  # data section JSON -> fingerprint (stat calls once per dataset)
    for seed in study.seeds:
        for arm in expand_arms(study):
            config = arm_config(study, arm, overrides, seed=seed)
            try:
                config = resolve_auto_precision(config, device)
                data_key = config.data.model_dump_json()
                if data_key not in fingerprints:
                    fingerprints[data_key] = data_fingerprint(config.data)
                chain = stage_chain(config, fingerprints[data_key])
            except UserError as err:
                raise UserError(f"study {study.name}, arm '{arm.label}': {err}") from None
            for kind, digest, parent in chain:
                first.setdefault(digest, (kind, parent, config))
                users.setdefault(digest, []).append((arm.label, seed))
            hashes = tuple(digest for _, digest, _ in chain)
            runs.append(RunRecord(arm, seed, config, hashes, hashes[-1]))
    stages = {
        digest: StageRecord(kind, digest, parent, config, tuple(users[digest]))
        for digest, (kind, parent, config) in first.items()  # insertion order: parents first
    }
    return Plan(study, tuple(runs), stages)


def resolve_auto_precision(config: Config, device: str | None = None) -> Config:
    """``runtime.precision: auto`` replaced by what it means for the stage's device here (bf16 on
    a GPU, fp32 on a CPU), so a CPU stage is never taken for a GPU one.

    Args:
        config: a resolved config.
        device: the device the stage will run on; default ``runtime.device``.
    """
    if config.runtime.precision != "auto":
        return config
    from core.runtime import resolve_precision

    precision = resolve_precision("auto", device or config.runtime.device)
    return config.model_copy(update={"runtime": config.runtime.model_copy(update={"precision": precision})})


def stage_chain(config: Config, data: str | None = None) -> list[tuple[StageName, str, str | None]]:
    """A run's stages as ``(kind, hash, parent hash)``, honouring the stage switches.

    ``pretrain.enabled: false``: the finetune has no parent (it starts from the initial model).
    ``finetune.enabled: false``: the test evaluation runs on the pre-trained checkpoint.

    Args:
        config: the run's resolved config (``runtime.precision`` already resolved).
        data: the data's fingerprint; computed from ``config.data`` when omitted.

    Raises:
        UserError: both stages disabled (nothing to train).
    """
    kinds = enabled_stages(config)
    data = data if data is not None else data_fingerprint(config.data)
    flat = flatten(config)  # once per run: planning a 1,000-arm study flattens 1,000 configs
    chain, parent = [], None
    for kind in kinds:
        digest = _digest(kind, parent, data, _own_fields(flat, kind))
        chain.append((kind, digest, parent))
        parent = digest
    return chain


def hashed_fields(config: Config, kind: StageName) -> dict[str, Any]:
    """The ``{dotted.key: value}`` a stage's hash covers (its own fields, not its parent's).

    Args:
        config: a resolved config.
        kind: the stage.
    """
    return _own_fields(flatten(config), kind)


def _own_fields(flat: Mapping[str, Any], kind: StageName) -> dict[str, Any]:
    prefixes = STAGES[kind].fields
    below = tuple(p + "." for p in prefixes)
    neutral = _neutral_fields(flat, kind)
    return {key: value for key, value in flat.items() if key not in neutral and (key in prefixes or key.startswith(below))}


def _neutral_fields(flat: Mapping[str, Any], kind: StageName) -> frozenset[str]:
    """:data:`NEUTRAL_FIELDS`, less ``eval.batch_size`` for a stage that embeds sparse captions
    through a decoder whose padding is unmasked (the released code's): a caption's embedding then
    depends on how much padding its evaluation batch has, so validation and test do too."""
    through_decoder = STAGES[kind].decoder is not False  # eval: its parent's model, maybe the decoder's
    unmasked = through_decoder and flat.get("model.decoder.depth", 0) > 0 and flat.get("model.decoder.mask_padding") is False
    return NEUTRAL_FIELDS - {"eval.batch_size"} if unmasked else NEUTRAL_FIELDS


def stage_hash(config: Config, kind: StageName, parent: str | None, data: str) -> str:
    """The stage's content hash: its fields, the data's fingerprint and its parent's hash, as
    canonical JSON.

    Args:
        config: a resolved config.
        kind: the stage.
        parent: the parent stage's hash, or None for a first stage.
        data: the data's fingerprint (:func:`core.data.data_fingerprint`).
    """
    return _digest(kind, parent, data, hashed_fields(config, kind))


def _digest(kind: StageName, parent: str | None, data: str, fields: Mapping[str, Any]) -> str:
    payload = {"version": HASH_VERSION, "kind": kind, "parent": parent, "data": data, "fields": fields}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_LENGTH]


def stage_dir(workdir: str | os.PathLike, digest: str) -> Path:
    """Where a stage's outputs live: ``<workdir>/stages/<hash>/``.

    Args:
        workdir: the harness working directory.
        digest: the stage's hash.
    """
    return Path(workdir) / "stages" / digest


def mark_done(workdir: str | os.PathLike, digest: str) -> None:
    """Write the stage's ``DONE`` marker: call it last, once every output is in place.

    Args:
        workdir: the harness working directory.
        digest: the stage's hash.
    """
    folder = stage_dir(workdir, digest)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{DONE}.tmp"
    tmp.write_text(digest + "\n")
    os.replace(tmp, folder / DONE)  # atomic: a crash never leaves a marker without its stage


def stage_status(plan: Plan, workdir: str | os.PathLike) -> dict[str, StageStatus]:
    """Each stage's state on disk: ``done`` (marker), ``partial`` (an epoch checkpoint, no
    marker: resumable) or ``todo``.

    Args:
        plan: the plan.
        workdir: the harness working directory.
    """
    status: dict[str, StageStatus] = {}
    for digest in plan.stages:
        folder = stage_dir(workdir, digest)
        if (folder / DONE).is_file():
            status[digest] = "done"
        elif (folder / LAST_CHECKPOINT).is_file():
            status[digest] = "partial"
        else:
            status[digest] = "todo"
    return status
