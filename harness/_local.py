"""A stage's outputs in this workdir: finishing a stage, making a shared parent stage present,
and resetting a stage whose checkpoint is damaged.

The store says whether a stage's *run* is done; only ``<workdir>/stages/<hash>/DONE`` says that
its *files* are here (docs/reliability.md). A task that must train on a parent stage whose run
finished in another workdir (another person's, another machine's) gets the parent's files
here first: downloaded from the run's ``stage/`` artifacts when they were logged
(``--share-checkpoints``), else by running the parent stage again in this workdir, untracked (its
FINISHED run stays the only one; its ``harness.holders`` tag gains this workdir).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core.files import DAMAGED, atomic_write_text
from core.stages import BEST_CHECKPOINT
from harness._locks import flock
from harness.plan import DONE, StageRecord, mark_done, stage_dir

__all__ = [
    "RECORD", "BEST_FILES", "StageOutputs", "work_lock", "read_record", "finish_stage", "make_present", "reset_stage",
    "stage_of",
]

RECORD = "record.json"  # a finished stage's StageOutputs: what replay logs
# what another workdir needs of a stage: the selected weights, their sidecar, the record
BEST_FILES = (BEST_CHECKPOINT, str(Path(BEST_CHECKPOINT).with_suffix(".json")), RECORD)


@dataclass(frozen=True)
class StageOutputs:
    """What a finished stage leaves in ``record.json`` beside its files."""

    history: list[dict[str, float]] = field(default_factory=list)  # per epoch, in the store's metric names
    best: dict[str, float] = field(default_factory=dict)  # validation metrics (bare) at the selected epoch
    best_epoch: int | None = None
    final: dict[str, float] = field(default_factory=dict)  # test metrics, in the store's names (eval)
    seconds: float = 0.0  # compute inside core (the overhead benchmark subtracts it from wall time)
    checkpoint_seconds: float = 0.0  # of which writing checkpoints

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> StageOutputs:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in json.loads(text).items() if key in known})


log = logging.getLogger("harness")


def work_lock(workdir: Path, kind: str, key: str):
    """Wait for any other process of this workdir working on the same task or stage."""
    name = hashlib.sha256(key.encode()).hexdigest()[:16]  # task keys hold arm labels: any characters
    return flock(Path(workdir) / "locks" / kind / f"{name}.lock")


def read_record(workdir: Path, digest: str) -> StageOutputs:
    """The record a finished stage left (what replay logs into a study's run)."""
    return StageOutputs.from_json((stage_dir(workdir, digest) / RECORD).read_text(encoding="utf-8"))


def finish_stage(workdir: Path, digest: str, record: StageOutputs) -> None:
    """Write the stage's record, then its DONE marker (both atomic: a crash leaves no marker
    without its record)."""
    atomic_write_text(stage_dir(workdir, digest) / RECORD, record.to_json())
    mark_done(workdir, digest)


def make_present(
    stage: StageRecord,
    workdir: Path,
    fetch: Callable[[Path], bool],
    run: Callable[[Path], StageOutputs],
) -> str:
    """Make a finished stage's outputs present in this workdir; returns how: ``here``, ``fetched``
    or ``ran``.

    Args:
        stage: the stage (a shared pre-training).
        workdir: this workdir.
        fetch: downloads the stage's logged files into the folder it is given; False when the
            store holds none.
        run: runs the stage into the folder it is given and returns its record.
    """
    out = stage_dir(workdir, stage.hash)
    with work_lock(workdir, "stages", stage.hash):
        if (out / DONE).is_file():
            return "here"
        out.mkdir(parents=True, exist_ok=True)
        if fetch(out):
            from core.checkpoint import checkpoint_problem  # torch: only where stages run

            problem = checkpoint_problem(out / BEST_FILES[0])
            if problem is None and (out / RECORD).is_file():
                mark_done(workdir, stage.hash)
                return "fetched"
            log.warning("%s stage %s: the checkpoint fetched from the store is unusable (%s); running it here", stage.kind, stage.hash, problem)
            for name in BEST_FILES:
                (out / name).unlink(missing_ok=True)
        finish_stage(workdir, stage.hash, run(out))
        return "ran"


def stage_of(workdir: Path, path: Path) -> str | None:
    """The hash of the stage folder of this workdir that holds ``path``, or None."""
    folder = Path(path).resolve().parent
    return folder.name if folder.parent == (Path(workdir) / "stages").resolve() else None


def reset_stage(workdir: Path, digest: str, damaged: Path) -> None:
    """Undo a stage's DONE and set its damaged checkpoint aside (``*.damaged``, with its
    sidecar), so that the next run of the stage trains it again (core's resume sees the missing
    checkpoint and restarts).

    Args:
        workdir: this workdir.
        digest: the stage's hash.
        damaged: the damaged tensor file.
    """
    with work_lock(workdir, "stages", digest):
        (stage_dir(workdir, digest) / DONE).unlink(missing_ok=True)
        for path in (damaged, damaged.with_suffix(".json")):
            if path.exists():
                os.replace(path, path.with_name(path.name + DAMAGED))
