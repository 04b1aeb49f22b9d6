"""What the report knows of a study, recovered from the tracking store alone.

The parent run carries the study file (``study.yaml``), the arm order and the baseline. The file
is validated with the study schema, with its ``setting`` replaced by the default one: the report
needs the arms, seeds, reference numbers and report options, never the setting, whose path may
mean nothing on the machine that renders the report. A store without the file (or with one the
schema no longer reads) still gets a report: arms and seeds as the runs show them, the default
report options, no reference rows, and a note saying so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import yaml
from pydantic import ValidationError

from harness.config import DEFAULT_SETTING
from harness.study import ReportSpec, Study, expand_arms
from harness.tracking import names
from harness.tracking.read import StoredStudy


@dataclass(frozen=True)
class StudyView:
    """One study as the report sees it.

    Attributes:
        name: the study (= experiment) name.
        description: the study's description ("" when unknown).
        parent_run_id: the parent run (figures are logged there).
        arms: arm labels in the study's order, then any arm the runs show that the study no
            longer has (never dropped silently).
        baseline: the arm the others are compared with (None: no delta column).
        seeds: the seeds the study asks for; the runs' own seeds when the study file is absent.
        arm_values: each arm's config values (``{dotted.key: value}``), from the study file.
        vary: the study's grid keys, in order (empty for explicit arms or an unknown study).
        explicit_arms: whether the study lists arms explicitly (their labels are the x axis).
        reference: published numbers ``{arm: {metric: value}}``.
        reference_source: where the published numbers come from.
        spec: the report options (metrics, split, plot, x).
        notes: what the report could not recover, shown under the table.
    """

    name: str
    description: str
    parent_run_id: str
    arms: tuple[str, ...]
    baseline: str | None
    seeds: tuple[int, ...]
    arm_values: Mapping[str, Mapping[str, Any]]
    vary: tuple[str, ...]
    explicit_arms: bool
    reference: Mapping[str, Mapping[str, float]]
    reference_source: str | None
    spec: ReportSpec
    notes: tuple[str, ...] = ()


def study_view(stored: StoredStudy, frame: pd.DataFrame) -> StudyView:
    """Combine the parent run's record with the runs' own tags.

    Args:
        stored: the study's parent-run record.
        frame: the study's rows of ``runs_frame`` (for arms and seeds the study file lacks).
    """
    study, problem = _parse(stored.study_yaml)
    runs = frame[frame["stage"] != names.STAGE_PRETRAIN].sort_values("start_time", kind="stable")
    seen_arms = [a for a in dict.fromkeys(runs["arm"]) if isinstance(a, str)]
    seen_seeds = sorted(int(s) for s in runs["seed"].dropna().unique())
    notes = (problem,) if problem else ()
    if study is None:
        order = list(stored.arm_order) or seen_arms
        return StudyView(
            name=stored.name,
            description="",
            parent_run_id=stored.parent_run_id,
            arms=tuple(dict.fromkeys([*order, *seen_arms])),
            baseline=stored.baseline,
            seeds=tuple(seen_seeds),
            arm_values={},
            vary=(),
            explicit_arms=False,
            reference={},
            reference_source=None,
            spec=ReportSpec(),
            notes=notes,
        )
    arms = expand_arms(study)
    order = list(stored.arm_order) or [arm.label for arm in arms]
    return StudyView(
        name=stored.name,
        description=study.description.strip(),
        parent_run_id=stored.parent_run_id,
        arms=tuple(dict.fromkeys([*order, *seen_arms])),
        baseline=stored.baseline or study.baseline,
        seeds=stored.seeds or study.seeds,  # `harness run --seeds` overrides the file's
        arm_values={arm.label: dict(arm.values) for arm in arms},
        vary=tuple(study.vary),
        explicit_arms=bool(study.arms),
        reference={label: dict(values) for label, values in study.reference.items()},
        reference_source=study.reference_source,
        spec=study.report,
        notes=notes,
    )


def report_spec(stored: StoredStudy) -> ReportSpec:
    """The study's report options from its stored study file (the defaults when it has none).

    Args:
        stored: the study's parent-run record.
    """
    study, _ = _parse(stored.study_yaml)
    return study.report if study is not None else ReportSpec()


def _parse(text: str | None) -> tuple[Study | None, str | None]:
    """The stored study file as a Study, or None and the reason it could not be read."""
    if text is None:
        return None, f"the parent run has no {names.ARTIFACT_STUDY}: default report options, no reference rows"
    try:
        raw = yaml.safe_load(text)
        if not isinstance(raw, dict):
            raise ValueError("not a mapping")
        return Study.model_validate({**raw, "setting": DEFAULT_SETTING}), None
    except (yaml.YAMLError, ValidationError, ValueError) as err:
        first = str(err).strip().splitlines()[0]
        return None, f"the stored {names.ARTIFACT_STUDY} does not read as a study ({first}): default report options"
