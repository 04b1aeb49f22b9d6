"""What ``harness run`` checks before any work, so that a bad input is one line, not a FAILED run
per arm: the plan's size, the backbones, weight files and devices every arm names, and the workdir.

The tracking store is checked by :func:`harness.tracking.init_store` (a short timeout, the URI in
the message). Everything here is cheap: a 1,000-arm plan is checked once per distinct backbone
and device, not per arm, and nothing is built or downloaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from core.config import Config
from core.errors import UserError
from core.stages import TRAINING_STAGES
from harness._rank import Launch
from harness.plan import Plan
from harness.study import Study, expand_arms

__all__ = ["DEFAULT_MAX_RUNS", "check_plan", "check_launch", "check_nodes", "check_plan_size", "check_workdir"]

DEFAULT_MAX_RUNS = 500  # (arm, seed) runs above which `harness run` asks for --yes


def check_plan(plan: Plan, devices: Sequence[str] = ()) -> None:
    """Every backbone, local weight file and device the plan's arms name (:func:`core.checks.
    check_config`), and the ``--devices`` given.

    Args:
        plan: the study's plan.
        devices: the ``--devices`` list (each must exist here).

    Raises:
        UserError: naming the study, the first arm concerned, the key and the bad value.
    """
    from core.checks import check_config, check_device  # timm's registry: only when checking

    seen: set[str] = set()
    for run in plan.runs:
        key = _names_outside(run.config)
        if key in seen:
            continue
        seen.add(key)
        try:
            check_config(run.config)
        except UserError as err:
            raise UserError(f"study {plan.study.name}, arm '{run.arm.label}': {err}") from None
    for device in devices:
        check_device(device, "--devices")


def check_launch(plan: Plan, launch: Launch, devices: Sequence[str] = ()) -> None:
    """That a stage can run on ``launch.world_size`` processes: every training stage's global
    batch splits evenly between them, and ``--devices`` (one worker per device) is not asked for
    as well.

    Raises:
        UserError: naming the option, and the arm and key whose value does not fit.
    """
    if launch.world_size == 1:
        return
    if devices:
        raise UserError("--devices and --nproc-per-node: give one (each launched rank takes the GPU of its local rank)")
    for run in plan.runs:
        for kind in TRAINING_STAGES:
            section = getattr(run.config, kind)
            if section.enabled and section.batch_size % launch.world_size:
                raise UserError(
                    f"study {plan.study.name}, arm '{run.arm.label}': {kind}.batch_size={section.batch_size} does not"
                    f" split between {launch.world_size} processes ({_processes(launch)}); the global batch"
                    " must divide evenly, so every process holds the same share"
                )


def _processes(launch: Launch) -> str:
    return "--nproc-per-node" if launch.nnodes == 1 else f"--nproc-per-node {launch.nproc_per_node} x --nnodes {launch.nnodes}"


def check_nodes(launch: Launch, executor: str, workers: int = 1) -> None:
    """That the options of a launch on several machines fit together, before any planning:
    hand-started nodes name node 0's address and their own rank; SLURM places the nodes itself.

    Raises:
        UserError: naming the options that do not fit.
    """
    if launch.nnodes == 1:
        if launch.node_rank or launch.rdzv_endpoint:
            raise UserError("--node-rank and --rdzv-endpoint are for a stage on several machines (--nnodes above 1)")
        return
    if executor == "submitit-local":
        raise UserError("--nnodes: submitit's local executor runs on this machine alone; use --executor slurm, or start harness run on each node")
    if executor == "slurm":
        if launch.node_rank or launch.rdzv_endpoint:
            raise UserError("--executor slurm places the nodes itself: --node-rank and --rdzv-endpoint are for nodes started by hand")
        return
    if not launch.rdzv_endpoint:
        raise UserError("--nnodes: give --rdzv-endpoint HOST[:PORT], where the other nodes reach node 0 (the same on every node)")
    try:
        launch.address
    except ValueError as err:
        raise UserError(f"--rdzv-endpoint {launch.rdzv_endpoint!r}: {err}") from None
    if launch.node_rank >= launch.nnodes:
        raise UserError(f"--node-rank {launch.node_rank} with --nnodes {launch.nnodes}: the ranks are 0 to {launch.nnodes - 1}")
    if workers > 1:
        raise UserError("--nnodes: each stage runs on every node, one stage at a time; --workers runs stages side by side on one machine")


def _names_outside(config: Config) -> str:
    """What :func:`core.checks.check_config` reads: two configs that agree on it pass or fail alike."""
    parts = {
        "image": config.model.image.model_dump(mode="json", include={"backbone", "pretrained"}),
        "text": config.model.text.backbone,
        "device": config.runtime.device,
        **{
            stage: getattr(config, stage).structure.model_dump(mode="json")
            for stage in TRAINING_STAGES
            if getattr(config, stage).enabled and getattr(config, stage).structure.enabled
        },
    }
    return json.dumps(parts, sort_keys=True)


def check_plan_size(study: Study, max_runs: int | None) -> None:
    """Refuse a study of more than ``max_runs`` (arm, seed) runs (a grid grown by a typo), counted
    before any arm's config is resolved, so the refusal is instant at any size.

    Args:
        study: the loaded study (``--seeds`` applied).
        max_runs: the limit; None: no limit (``--yes``).
    """
    runs = len(expand_arms(study)) * len(study.seeds)
    if max_runs is not None and runs > max_runs:
        raise UserError(
            f"study {study.name} plans {runs} (arm, seed) runs, more than the limit of {max_runs}:"
            " look at the plan with --dry-run, then run it with --yes (or raise --max-runs)"
        )


def check_workdir(workdir: str | os.PathLike, create: bool = True) -> None:
    """The workdir is a folder this process can write: created when missing (``create``), else
    only looked at (a dry run writes nothing).

    Args:
        workdir: the harness working directory.
        create: create it and write a probe file; False: check without writing.

    Raises:
        UserError: it is a file, or cannot be created or written (permissions, a read-only file
            system), in one line naming it and the cause.
    """
    workdir = Path(workdir)
    hint = "give --workdir (or HARNESS_HOME) a folder you can write"
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"workdir {workdir} is a file, not a folder; {hint}")
    if not create:
        existing = next(p for p in (workdir, *workdir.parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise UserError(f"workdir {workdir}: {existing} is not writable; {hint}")
        return
    probe = workdir / f".write-probe-{os.getpid()}"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"workdir {workdir} is not writable ({err.strerror}); {hint}") from None
