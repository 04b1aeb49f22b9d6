"""Benchmark of stage sharing: a study run by the harness against every arm x seed from scratch.

Stage counts come from the real planner (``harness.plan.make_plan``) on the study as written
(with the benchmark's seeds): the harness executes each distinct stage once; the released
scripts run every (arm, seed) as its own chain ``pretrain -> finetune -> eval``.

Compute time comes from real stage runs: the study runs through ``run_study`` exactly as
``harness run`` would (fresh workdir and store, the data cache prepared beforehand), with its
SynthScenes splits scaled down by ``data_scale`` (epochs, model and batch as the setting has
them, so pre-training keeps its share of the work). Each stage's record holds the seconds core
spent on it. From scratch, each (arm, seed) pays its whole chain: its own pre-training (the same
computation as its seed's shared one, counted at that stage's measured time), its fine-tuning and
its evaluation; the shared run is its measured wall time, harness overhead included.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from core.data import prepare
from core.stages import PRETRAIN, STAGES
from harness._local import read_record
from harness.bench._data import describe_splits, scaled_splits
from harness.bench.measure import ISSUE, Figure, check, figures_json, ratio_check
from harness.execute import run_study
from harness.plan import Plan, make_plan
from harness.study import arm_config, expand_arms, load_study
from harness.tracking import default_tracking_uri

__all__ = ["bench_sharing", "stage_counts", "DEFAULT_STUDY"]

DEFAULT_STUDY = Path(__file__).resolve().parents[2] / "studies" / "decoder_depth.yaml"


def stage_counts(plan: Plan) -> dict[str, dict[str, int]]:
    """Stages by kind: ``shared`` (each distinct stage once, as the harness runs them) and
    ``scratch`` (every run's whole chain, as separate scripts run them).

    Args:
        plan: a study's plan.
    """
    shared = Counter(stage.kind for stage in plan.stages.values())
    scratch = Counter(plan.stages[digest].kind for run in plan.runs for digest in run.chain)
    return {"shared": dict(shared), "scratch": dict(scratch)}


def bench_sharing(study: str | Path = DEFAULT_STUDY, seeds: Sequence[int] = (0, 1, 2), data_scale: float = 0.125) -> dict[str, Any]:
    """Count the stages of ``study`` with and without sharing, and time them on scaled-down data.

    Args:
        study: the study file (default: the decoder-depth ablation).
        seeds: the seeds it runs with (replacing the file's).
        data_scale: the share of each SynthScenes split kept for the timed run (0 < scale <= 1).
    """
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = _with_seeds(Path(study).resolve(), list(seeds), tmp / Path(study).name)
        written = load_study(path)
        full = make_plan(written)
        counts = stage_counts(full)
        reduced = scaled_splits(arm_config(written, expand_arms(written)[0]), data_scale, bench="bench_sharing")
        overrides = tuple(f"{key}={value}" for key, value in reduced.items())
        workdir = tmp / "work"
        prepare(make_plan(written, overrides).runs[0].config.data, workdir / "data")
        started = time.perf_counter()
        result = run_study(path, workdir=workdir, tracking_uri=default_tracking_uri(workdir), overrides=overrides)
        wall = time.perf_counter() - started
        if result.failed:
            raise RuntimeError(f"the benchmark study failed: {result.failed[0].error}")
        seconds = {h: read_record(workdir, h).seconds for h in result.plan.stages}
    by_kind = {
        kind: Figure(tuple(seconds[h] for h, s in result.plan.stages.items() if s.kind == kind), "s")
        for kind in STAGES
        if any(s.kind == kind for s in result.plan.stages.values())
    }
    figures = {
        "shared: harness run wall time": Figure((wall,), "s"),
        "shared: compute, each distinct stage once": Figure((sum(seconds.values()),), "s"),
        "from scratch: compute, every arm x seed chain": Figure(
            (sum(seconds[h] for run in result.plan.runs for h in run.chain),), "s"
        ),
        **{f"one {kind} stage": fig for kind, fig in by_kind.items()},
    }
    n_runs, n_seeds = len(full.runs), len(seeds)
    scratch_s, wall_fig = figures["from scratch: compute, every arm x seed chain"], figures["shared: harness run wall time"]
    return {
        "figures": figures_json(figures),
        "checks": [
            check("pre-trainings executed, shared (one per seed)", counts["shared"].get(PRETRAIN.name, 0), "==", n_seeds, source=ISSUE),
            check("pre-trainings executed, from scratch (one per arm x seed)", counts["scratch"].get(PRETRAIN.name, 0), "==", n_runs, source=ISSUE),
            ratio_check("wall time saving: scratch compute / shared wall time", scratch_s, wall_fig, ">", 1.0, ISSUE),
        ],
        "notes": [
            f"{full.study.name} with seeds {list(seeds)}: {n_runs} (arm, seed) runs. Stage counts from make_plan on the"
            " study as written.",
            f"Timed on SynthScenes splits scaled by {data_scale} ({describe_splits(reduced)});"
            " epochs, model and batch are the setting's.",
            "From scratch counts each run's own pre-training at the measured time of its seed's (the same computation);"
            " the shared figure is the real wall time of run_study, tracking and checkpoints included.",
        ],
        "study": str(study),
        "seeds": list(seeds),
        "runs": n_runs,
        "stages_shared": counts["shared"],
        "stages_scratch": counts["scratch"],
        "data_scale": data_scale,
        "saving_s": scratch_s.median - wall,
        "saving_share": 1 - wall / scratch_s.median,
    }


def _with_seeds(study: Path, seeds: list[int], out: Path) -> Path:
    """A copy of the study file with these seeds, readable from another folder (its setting as
    ``load_study`` resolved it)."""
    loaded = load_study(study)
    out.write_text(yaml.safe_dump({**loaded.model_dump(mode="json"), "seeds": seeds}, sort_keys=False))
    return out
