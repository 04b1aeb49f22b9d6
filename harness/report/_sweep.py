"""What the report knows of a sweep, from the tracking store alone: its trials, their objective
per epoch, the ranking, and the parameter importances (fANOVA over the complete trials).

The parent run carries the spec (``sweep.yaml``): the space's keys, order and distributions. The
spec is validated with its ``setting`` replaced by the default one (the report never needs it). A
store without a readable spec still gets a report: the keys the trials show, no importances.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import pandas as pd
import yaml
from optuna.distributions import BaseDistribution
from pydantic import ValidationError

from harness.config import DEFAULT_SETTING
from harness.tracking import names
from harness.tracking.read import StoredSweep

__all__ = ["SweepReport", "sweep_report", "TOP_K"]

TOP_K = 10  # rows of the top-k table
_IMPORTANCE_SEED = 0  # the same store gives the same importances


@dataclass(frozen=True)
class SweepReport:
    """One sweep as the report shows it.

    Attributes:
        name: the sweep's name.
        parent_run_id: its parent run (figures are logged there).
        objective: the objective metric (``val/<metric>``).
        direction: ``maximize`` or ``minimize``.
        keys: the space's keys, in the spec's order.
        distributions: the space's distributions (empty when the spec is unreadable).
        trials: one row per trial that counts (a re-run replaces the trial it re-runs), by number.
        history: the objective per epoch of those trials.
        top: the complete trials, best first (at most ``top_k``).
        importances: ``{key: share}``, largest first (empty when not computable).
        notes: what the report could not recover or compute.
    """

    name: str
    parent_run_id: str
    objective: str
    direction: str
    keys: tuple[str, ...]
    distributions: Mapping[str, BaseDistribution]
    trials: pd.DataFrame
    history: pd.DataFrame
    top: pd.DataFrame
    importances: Mapping[str, float]
    notes: tuple[str, ...] = ()

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    @property
    def complete(self) -> pd.DataFrame:
        return self.trials[self.trials["state"] == "complete"]


def sweep_report(stored: StoredSweep, trials: pd.DataFrame, history: pd.DataFrame, top_k: int = TOP_K) -> SweepReport:
    """The sweep's report from its parent record and its trial frames (pure).

    Args:
        stored: the parent run's record.
        trials: ``trials_frame``'s trial rows.
        history: ``trials_frame``'s history rows.
        top_k: rows of the ranking.
    """
    notes = []
    distributions, problem = _distributions(stored.spec_yaml)
    if problem:
        notes.append(problem)
    replaced = set(trials["requeue_of"].dropna().astype(int))
    trials = trials[~trials["trial"].isin(replaced)].reset_index(drop=True)
    history = history[history["trial"].isin(trials["trial"])].reset_index(drop=True)
    keys = tuple(distributions) or tuple(dict.fromkeys(k for params in trials["params"] for k in params))
    complete = trials[trials["state"] == "complete"]
    top = complete.sort_values(["value", "trial"], ascending=[stored.direction != "maximize", True], kind="stable")
    importances, problem = _importances(complete, distributions, stored.direction)
    if problem:
        notes.append(problem)
    return SweepReport(
        name=stored.name,
        parent_run_id=stored.parent_run_id,
        objective=stored.objective,
        direction=stored.direction,
        keys=keys,
        distributions=distributions,
        trials=trials,
        history=history,
        top=top.head(top_k).reset_index(drop=True),
        importances=importances,
        notes=tuple(notes),
    )


def _distributions(text: str | None) -> tuple[dict[str, BaseDistribution], str | None]:
    from harness.sweep._spec import SweepSpec  # optuna's distributions; the spec's schema

    if text is None:
        return {}, f"the parent run has no {names.ARTIFACT_SWEEP}: no parameter importances"
    try:
        raw = yaml.safe_load(text)
        if not isinstance(raw, dict):
            raise ValueError("not a mapping")
        return SweepSpec.model_validate({**raw, "setting": DEFAULT_SETTING}).distributions(), None
    except (yaml.YAMLError, ValidationError, ValueError) as err:
        first = str(err).strip().splitlines()[0]
        return {}, f"the stored {names.ARTIFACT_SWEEP} does not read as a sweep spec ({first}): no parameter importances"


def _importances(
    complete: pd.DataFrame, distributions: Mapping[str, BaseDistribution], direction: str
) -> tuple[dict[str, float], str | None]:
    """fANOVA importances over the complete trials, through an in-memory Optuna study."""
    if not distributions:
        return {}, None
    if len(complete) < 2:
        return {}, f"parameter importances need 2 complete trials ({len(complete)} so far)"
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created in memory" line in a report
    study = optuna.create_study(direction=direction)
    study.add_trials([
        optuna.trial.create_trial(params=_typed(row.params, distributions), distributions=dict(distributions), value=row.value)
        for row in complete.itertuples()
        if set(distributions) <= set(row.params)
    ])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=_IMPORTANCE_SEED)
            values = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError) as err:
        return {}, f"parameter importances could not be computed ({err})"
    if not values or not np.isfinite(list(values.values())).all():
        return {}, "parameter importances could not be computed (the trials' values do not vary)"
    return dict(values), None


def _typed(params: Mapping[str, Any], distributions: Mapping[str, BaseDistribution]) -> dict[str, Any]:
    """JSON gave ints for whole floats (``1.0`` -> ``1``): back to each distribution's type."""
    out = {}
    for key, dist in distributions.items():
        value = params[key]
        if isinstance(dist, optuna.distributions.FloatDistribution):
            value = float(value)
        out[key] = value
    return out
