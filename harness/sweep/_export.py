"""``--export-best PATH``: a study file that re-runs the best trial's config with the spec's seeds."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from optuna.trial import FrozenTrial

from core.errors import UserError
from harness.study import load_study
from harness.sweep._spec import SweepSpec

__all__ = ["export_best", "best_study"]


def best_study(spec: SweepSpec, best: FrozenTrial, overrides: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """The study as a mapping: the spec's setting and base, ``--set`` values and the best values.

    Args:
        spec: the sweep spec.
        best: the best complete trial.
        overrides: ``--set`` values the trials ran with.
        folder: where the study file goes (a setting given as a path is made absolute).
    """
    setting = spec.setting
    if Path(setting).suffix in (".yaml", ".yml"):
        setting = str(Path(setting).resolve())
    return {
        "name": f"{spec.name}-best",
        "description": (
            f"The best trial of sweep {spec.name} (trial {best.number}, {spec.objective.metric} = {best.value:.4g}),"
            f" re-run with seeds {list(spec.seeds)}. Written by harness sweep --export-best."
        ),
        "setting": setting,
        "base": {**spec.base, **overrides, **best.params},
        "seeds": list(spec.seeds),
    }


def export_best(spec: SweepSpec, best: FrozenTrial | None, path: Path, overrides: Mapping[str, Any]) -> Path:
    """Write the study file and check that ``harness run`` reads it.

    Raises:
        UserError: no trial completed.
    """
    if best is None:
        raise UserError(f"--export-best: sweep '{spec.name}' has no complete trial yet")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    study = best_study(spec, best, overrides, path.parent)
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    load_study(path)  # the file is a valid study
    return path
