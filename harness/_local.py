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

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.files import atomic_write_text
from harness._locks import flock
from harness.plan import DONE, StageRecord, mark_done, stage_dir

__all__ = ["RECORD", "BEST_FILES", "work_lock", "read_record", "finish_stage", "make_present", "reset_stage", "stage_of"]

RECORD = "record.json"  # history, best, test metrics: what replay logs
BEST_FILES = ("best.safetensors", "best.json", RECORD)  # what another workdir needs of a stage
DAMAGED = ".damaged"
log = logging.getLogger("harness")


def work_lock(workdir: Path, kind: str, key: str):
    """Wait for any other process of this workdir working on the same task or stage."""
    name = hashlib.sha256(key.encode()).hexdigest()[:16]  # task keys hold arm labels: any characters
    return flock(Path(workdir) / "locks" / kind / f"{name}.lock")


def read_record(workdir: Path, digest: str) -> dict[str, Any]:
    """The record a finished stage left (what replay logs into a study's run)."""
    return json.loads((stage_dir(workdir, digest) / RECORD).read_text(encoding="utf-8"))


def finish_stage(workdir: Path, digest: str, record: dict[str, Any]) -> None:
    """Write the stage's record, then its DONE marker (both atomic: a crash leaves no marker
    without its record)."""
    atomic_write_text(stage_dir(workdir, digest) / RECORD, json.dumps(record))
    mark_done(workdir, digest)


def make_present(
    stage: StageRecord,
    workdir: Path,
    fetch: Callable[[Path], bool],
    run: Callable[[Path], dict[str, Any]],
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
