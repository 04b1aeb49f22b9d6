"""Sweep specs: a validated, frozen description of a search, read like a study file.

A spec names a base setting, overrides for every trial (``base``), the search space over config
keys, the objective (a validation metric), the budget (``n_trials`` and/or ``timeout``), the
sampler and pruner (by name, with constructor arguments) and the seeds of the confirmation runs
that ``--export-best`` writes. Loading checks the spec's own keys, every space key against the
config tree (a typo gets the closest key) and every range endpoint and choice as a config value,
so a bad spec fails before a trial runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from optuna.distributions import BaseDistribution
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import UserError
from core.metric_keys import RSUM
from harness.config import DEFAULT_SETTING, flatten, load_yaml, resolve
from harness.study import SEED_KEY, SettingName, SimpleName, explain_errors
from harness.sweep import _samplers
from harness.sweep._space import distribution
from harness.tracking.names import METRICS, VAL_PREFIX, val_metric

__all__ = ["ParamSpec", "ObjectiveSpec", "SamplerSpec", "PrunerSpec", "SweepSpec", "load_sweep", "DEFAULT_SPEC"]

DEFAULT_SPEC = Path(__file__).resolve().parents[2] / "studies" / "sweep.yaml"
_VAL_METRICS = tuple(val_metric(m) for m in METRICS)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParamSpec(_Strict):
    """One key's range: ``float`` / ``int`` (``low``, ``high``, optional ``log`` or ``step``) or
    ``categorical`` (``choices``)."""

    type: Literal["float", "int", "categorical"]
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None

    @model_validator(mode="after")
    def _is_a_distribution(self) -> ParamSpec:
        self.distribution()  # Optuna's own range checks, as a validation error here
        return self

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution of this range."""
        return distribution(self.type, self.low, self.high, self.log, self.step, self.choices)

    def values(self) -> list[Any]:
        """The values to check against the config: the endpoints, or every choice."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]


class ObjectiveSpec(_Strict):
    """What a trial is scored by: a ``val/<metric>`` at the checkpoint the trial keeps."""

    metric: str = val_metric(RSUM)
    direction: Literal["maximize", "minimize"] = Field(None, validate_default=True)  # None: by metric

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in _VAL_METRICS:
            raise ValueError(f"'{metric}' is not a validation metric; use one of {', '.join(_VAL_METRICS)}")
        return metric

    @field_validator("direction", mode="before")
    @classmethod
    def _direction_of_metric(cls, value: str | None, info) -> str:
        if value is not None:
            return value
        metric = info.data.get("metric", val_metric(RSUM))
        return "minimize" if metric.endswith(("medr", "meanr")) else "maximize"  # ranks: lower is better

    @property
    def key(self) -> str:
        """The metric's key without the split (``rsum``)."""
        return self.metric.removeprefix(VAL_PREFIX)


class _Named(_Strict):
    name: str
    args: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _a_name_alone(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class SamplerSpec(_Named):
    """``tpe`` | ``random`` | ``grid`` | ``cmaes`` | ``gp`` | ``qmc``; seeded per trial from ``seed``."""

    name: str = "tpe"
    seed: int | None = 0  # trial n samples with seed + n: reproducible, and distinct across workers

    @model_validator(mode="after")
    def _known(self) -> SamplerSpec:
        _samplers.check_args("sampler", self.name, self.args)
        return self


class PrunerSpec(_Named):
    """``median`` | ``percentile`` | ``hyperband`` | ``successive_halving`` | ``none``."""

    name: str = "median"

    @model_validator(mode="after")
    def _known(self) -> PrunerSpec:
        _samplers.check_args("pruner", self.name, self.args)
        return self


class SweepSpec(_Strict):
    """A sweep spec, validated. Use :func:`load_sweep` to read one (errors then name the file)."""

    name: SimpleName  # the Optuna study and the MLflow experiment
    description: str = ""
    setting: SettingName = DEFAULT_SETTING
    base: dict[str, Any] = {}  # {dotted.key: value} for every trial
    space: dict[str, ParamSpec] = Field(min_length=1)  # {dotted.key: range}
    objective: ObjectiveSpec = ObjectiveSpec()
    n_trials: int | None = Field(None, ge=1)  # finished trials to reach (re-runs count the stored ones)
    timeout: float | None = Field(None, gt=0)  # seconds after which no new trial starts
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    seeds: tuple[int, ...] = (0,)  # trials run with the first; --export-best's study with all

    @field_validator("base", "space")
    @classmethod
    def _no_seed(cls, values: dict[str, Any]) -> dict[str, Any]:
        if SEED_KEY in flatten(values) or SEED_KEY in values:
            raise ValueError(f"sets {SEED_KEY}; list the seeds under `seeds` instead")
        return values

    @field_validator("seeds")
    @classmethod
    def _seeds_distinct(cls, seeds: tuple[int, ...]) -> tuple[int, ...]:
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError("give at least one seed, each once")
        return seeds

    @model_validator(mode="after")
    def _budget_and_grid(self) -> SweepSpec:
        if self.n_trials is None and self.timeout is None:
            raise ValueError("give n_trials, timeout or both: the sweep needs a budget")
        overlap = sorted(set(self.space) & set(flatten(self.base)))
        if overlap:
            raise ValueError(f"base sets {overlap}, which `space` searches")
        if self.sampler.name == "grid":
            _samplers.grid_space(self.distributions())
        return self

    def distributions(self) -> dict[str, BaseDistribution]:
        """``{dotted.key: Optuna distribution}``, in the order written."""
        return {key: param.distribution() for key, param in self.space.items()}


def load_sweep(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> SweepSpec:
    """Read and validate a sweep spec (safe YAML), and check its space against the config tree.

    Args:
        path: the spec's YAML file; a relative ``setting`` path is taken from its folder.
        overrides: ``--set`` values applied to every trial (checked with the space).

    Raises:
        UserError: naming the file and each bad key path; for a space key or value, the config's
            own message (closest valid key, allowed values).
    """
    path = Path(path)
    raw = load_yaml(path)
    if not isinstance(raw, Mapping):
        raise UserError(f"{path}: a sweep spec must be a mapping of keys (name, setting, space, ...)")
    raw = dict(raw)
    setting = raw.get("setting")
    if isinstance(setting, str) and Path(setting).suffix in (".yaml", ".yml") and not Path(setting).is_absolute():
        raw["setting"] = str(path.parent / setting)
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as err:
        raise UserError(explain_errors(err, path, SweepSpec, "sweep spec")) from None
    _check_against_config(spec, path, overrides or {})
    return spec


def _check_against_config(spec: SweepSpec, path: Path, overrides: Mapping[str, Any]) -> None:
    """Resolve the config at every endpoint and choice of every key (cheap: no model is built)."""
    base = [(f"sweep {path} base", spec.base)]
    resolve(spec.setting, overrides, layers=base)
    for key, param in spec.space.items():
        for value in param.values():
            try:
                resolve(spec.setting, overrides, layers=[*base, (f"sweep {path} space", {key: value})])
            except UserError as err:
                raise UserError(f"{path}: space.{key} = {value!r}: {err}") from None
