"""Study files: a validated, frozen description of an ablation, and its expansion into arms.

A study names a base setting, overrides applied to every arm (``base``) and its arms: a grid
(``vary``), an explicit list (``arms``, for conditional or non-grid ablations), both (each explicit
arm crossed with the grid), or neither (one arm, ``default``: the setting plus ``base``). Every arm
runs once per seed.

Loading checks the study itself (its keys, labels, seeds, setting); the config values are checked
when the study is planned (``harness.plan.make_plan`` resolves every arm before anything runs), so
an old study still loads for a report after a config key has been renamed.
"""

from __future__ import annotations

import collections
import difflib
import itertools
import json
import os
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from core.config import Config
from core.errors import UserError, did_you_mean
from core.metric_keys import RSUM, recall_key
from harness.config import DEFAULT_SETTING, flatten, load_yaml, parse_set, resolve, setting_path
from harness.tracking.names import METRICS

__all__ = [
    "Arm", "ArmSpec", "ReportSpec", "Study", "load_study", "expand_arms", "arm_config", "explain_errors",
    "SimpleName", "SettingName",
]

Metric = Literal[METRICS]
SEED_KEY = "runtime.seed"  # set by the study's `seeds`, never by base, arms or --set
DEFAULT_ARM = "default"  # the one arm of a study with neither `vary` nor `arms`


def _simple_name(name: str) -> str:
    # It names the MLflow experiment and appears in file names and filter strings.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"'{name}': use letters, digits, '_', '.' and '-' (starting with a letter or digit)")
    return name


def _setting_exists(value: str) -> str:
    try:
        setting_path(value)
    except UserError as err:
        raise ValueError(str(err)) from None
    return value


SimpleName = Annotated[str, AfterValidator(_simple_name)]  # a study's or a sweep's name
SettingName = Annotated[str, AfterValidator(_setting_exists)]  # a name in studies/settings/ or a YAML path


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ArmSpec(_Strict):
    """One explicit arm: a label and the config values it sets (``{dotted.key: value}``)."""

    label: str = Field(min_length=1)
    set: dict[str, Any] = {}


class ReportSpec(_Strict):
    """How ``harness report`` presents the study: table columns and one plot."""

    metrics: tuple[Metric, ...] = (RSUM, recall_key("i2t", 1), recall_key("t2i", 1))  # table columns; the first is the plot's y
    split: Literal["test", "test5k", "test1k"] = "test"  # test5k / test1k: COCO
    plot: Literal["bar", "line", "none"] = "bar"  # bar: one bar per arm; line: y over `x`
    x: str | None = None  # plot: line: the `vary` key on the x axis

    @field_validator("metrics")
    @classmethod
    def _some_metric(cls, metrics: tuple[str, ...]) -> tuple[str, ...]:
        if not metrics:
            raise ValueError("name at least one metric")
        return metrics


class Study(_Strict):
    """A study file, validated. Use :func:`load_study` to read one (errors then name the file)."""

    name: SimpleName  # the MLflow experiment
    description: str = ""
    setting: SettingName = DEFAULT_SETTING  # a name in studies/settings/ or a YAML path
    base: dict[str, Any] = {}  # {dotted.key: value} applied to every arm
    vary: dict[str, list[Any]] = {}  # grid {dotted.key: [values]}, expanded in the order written
    arms: tuple[ArmSpec, ...] = ()
    seeds: tuple[int, ...] = (0,)
    baseline: str = Field(None, validate_default=True)  # an arm label; None -> the first arm
    reference: dict[str, dict[Metric, float]] = {}  # published numbers {arm label: {metric: value}}
    reference_source: str | None = None  # where `reference` comes from (shown beside it)
    report: ReportSpec = ReportSpec()
    _path: Path | None = PrivateAttr(None)  # the file it was loaded from, for messages

    @field_validator("base")
    @classmethod
    def _base_has_no_seed(cls, values: dict[str, Any]) -> dict[str, Any]:
        _refuse_seed(values, "base")
        return values

    @field_validator("vary")
    @classmethod
    def _grid_not_empty(cls, vary: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in vary.items():
            if not values:
                raise ValueError(f"'{key}' has no values (an empty grid); give at least one")
        _refuse_seed(dict.fromkeys(vary), "vary")
        return vary

    @field_validator("arms")
    @classmethod
    def _arms_have_no_seed(cls, arms: tuple[ArmSpec, ...]) -> tuple[ArmSpec, ...]:
        for i, arm in enumerate(arms):
            _refuse_seed(arm.set, f"arms[{i}].set")
        return arms

    @field_validator("seeds")
    @classmethod
    def _seeds_distinct(cls, seeds: tuple[int, ...]) -> tuple[int, ...]:
        if not seeds:
            raise ValueError("give at least one seed")
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            raise ValueError(f"seeds repeat: {repeated}")
        return seeds

    @field_validator("baseline", mode="before")
    @classmethod
    def _baseline_default(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            return value  # membership is checked with the other labels in _labels_consistent
        if "vary" in info.data and "arms" in info.data:
            return _expand(info.data["vary"], info.data["arms"])[0].label
        return ""  # vary or arms failed: that error is the one to show

    @model_validator(mode="after")
    def _labels_consistent(self) -> Study:
        for i, arm in enumerate(self.arms):
            both = sorted(set(flatten(arm.set)) & set(self.vary))
            if both:
                raise ValueError(f"arms[{i}] ('{arm.label}') sets {both}, which `vary` also varies")
        labels = [arm.label for arm in expand_arms(self)]
        for label in labels:
            _check_printable(label)
        repeated = sorted(label for label, n in collections.Counter(labels).items() if n > 1)  # O(n): 10,000 arms
        if repeated:
            raise ValueError(f"arm labels repeat: {repeated}; give each arm its own label")
        _check_label("baseline", self.baseline, labels)
        for label in self.reference:
            _check_label(f"reference.{label}", label, labels)
        if self.reference and not self.reference_source:
            raise ValueError("reference_source: say where the reference numbers come from")
        if self.report.plot == "line":
            if self.report.x not in self.vary:
                raise ValueError(
                    f"report.x: plot 'line' needs x = one of the vary keys {list(self.vary)},"
                    f" got {self.report.x!r}"
                )
        elif self.report.x is not None:
            raise ValueError(f"report.x is only used by plot 'line' (plot is '{self.report.plot}')")
        return self


@dataclass(frozen=True)
class Arm:
    """One arm of a study: its label and the config values it sets on top of the study's base."""

    label: str
    values: dict[str, Any] = field(hash=False)


def load_study(path: str | os.PathLike, seeds: Sequence[int] | None = None, setting: str | None = None) -> Study:
    """Read and validate a study file (safe YAML).

    Args:
        path: the study's YAML file. A relative ``setting`` path inside it is taken relative to
            the file's folder.
        seeds: replace the file's ``seeds`` (``harness run --seeds``), validated like them.
        setting: replace the file's ``setting`` (``harness run --setting``: the same study at
            paper scale).

    Raises:
        UserError: naming the file, each bad key path and its problem (a typo gets the closest
            valid key).
    """
    path = Path(path)
    raw = load_yaml(path)
    if not isinstance(raw, Mapping):
        raise UserError(f"{path}: a study must be a mapping of keys (name, setting, vary, ...)")
    raw = dict(raw)
    own = raw.get("setting")  # a relative path in the file is relative to the file
    if isinstance(own, str) and Path(own).suffix in (".yaml", ".yml") and not Path(own).is_absolute():
        raw["setting"] = str(path.parent / own)
    if setting is not None:  # given on the command line: a name, or a path from the current folder
        raw["setting"] = setting
    if seeds is not None:
        raw["seeds"] = list(seeds)
    try:
        study = Study.model_validate(raw)
    except ValidationError as err:
        raise UserError(explain_errors(err, path)) from None
    study._path = path
    return study


def expand_arms(study: Study) -> list[Arm]:
    """The study's arms in the order written: explicit arms (outer) x the grid (inner).

    Grid labels are built from the varied values, ``depth=4`` or ``depth=4, placement=surround``,
    naming each key by its last segment (more segments when two keys would read the same).

    Args:
        study: a validated study.
    """
    return _expand(study.vary, study.arms)


def arm_config(
    study: Study,
    arm: Arm,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    seed: int | None = None,
) -> Config:
    """Resolve one arm's config: setting -> study base -> arm values -> seed -> ``--set``.

    Args:
        study: the study the arm belongs to.
        arm: one of ``expand_arms(study)``.
        overrides: ``--set`` items (``KEY=VALUE`` strings or a mapping), applied last.
        seed: the run's seed (``runtime.seed``); None keeps the setting's.

    Raises:
        UserError: a bad key or value, naming its source (the study file's base, the arm's label,
            or --set); ``runtime.seed`` in ``overrides`` (the study's ``seeds`` set it).
    """
    if not isinstance(overrides, Mapping):
        overrides = dict(parse_set(item) for item in overrides)
    if SEED_KEY in flatten(overrides):
        raise UserError(f"--set {SEED_KEY}: the study's `seeds` set the seed; edit them instead")
    layers = [(f"study {study._path or study.name} base", study.base), (f"arm '{arm.label}'", arm.values)]
    if seed is not None:
        layers.append((f"seed {seed}", {SEED_KEY: seed}))
    return resolve(study.setting, overrides, layers=layers)


# ---------------------------------------------------------------------------------- internals
def _expand(vary: Mapping[str, Sequence[Any]], arms: Sequence[ArmSpec]) -> list[Arm]:
    names = _short_names(list(vary))
    grid = [dict(zip(vary, point)) for point in itertools.product(*vary.values())]
    grid_labels = [", ".join(f"{names[k]}={_show(v)}" for k, v in point.items()) for point in grid]
    if not arms:
        return [Arm(label, point) for label, point in zip(grid_labels, grid)] if vary else [Arm(DEFAULT_ARM, {})]
    if not vary:
        return [Arm(arm.label, dict(arm.set)) for arm in arms]
    return [
        Arm(f"{arm.label}, {label}", {**arm.set, **point})
        for arm in arms
        for label, point in zip(grid_labels, grid)
    ]


def _short_names(keys: list[str]) -> dict[str, str]:
    """Each dotted key's shortest trailing part that no other key ends with."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            name = ".".join(parts[-n:])
            if sum(k == name or k.endswith("." + name) for k in keys) == 1:
                break
        names[key] = name
    return names


def _show(value: Any) -> str:
    """A value as a label shows it: strings bare, everything else as JSON (true, 0.5, [1, 2])."""
    return value if isinstance(value, str) else json.dumps(value)


def _refuse_seed(values: Mapping[str, Any], where: str) -> None:
    if SEED_KEY in flatten(values):
        raise ValueError(f"{where} sets {SEED_KEY}; list the seeds under `seeds` instead")


# control characters (newline, tab, escape), format characters (bidi overrides, zero-width) and
# line separators: a label is printed in tables, logs and reports, where they break or hide text
_UNPRINTABLE = ("Cc", "Cf", "Zl", "Zp")


def _check_printable(label: str) -> None:
    bad = next((c for c in label if unicodedata.category(c) in _UNPRINTABLE), None)
    if bad is not None:
        raise ValueError(
            f"arm label {label!r} holds the control character U+{ord(bad):04X}; labels are printed in tables,"
            " logs and reports: remove it (from the arm's label, or from the varied value it is built from)"
        )


def _check_label(where: str, label: str, labels: list[str]) -> None:
    if label not in labels:
        raise ValueError(f"{where}: '{label}' is not an arm{did_you_mean(label, labels)}; arms: {', '.join(labels)}")


def explain_errors(err: ValidationError, path: Path, schema: type[BaseModel] = Study, kind: str = "study") -> str:
    """A validation error of a YAML file as one line per problem: the key path, what is wrong,
    the bad value, and for an unknown key the closest valid one and the keys valid there.

    Args:
        err: pydantic's error.
        path: the file (named in the first line).
        schema: the file's top-level model.
        kind: what the file is (``study``, ``sweep spec``).
    """
    lines = [f"{path}: invalid {kind}:"]
    for problem in err.errors():
        loc = [part for part in problem["loc"] if part != "[key]"]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            valid = _valid_keys(loc, schema)
            hint = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            message = (
                "unknown key"
                + (f"; did you mean '{hint[0]}'?" if hint else "")
                + f" Valid keys there: {', '.join(valid)}"
            )
        elif problem["type"] not in ("missing", "value_error") and not isinstance(problem["input"], (Mapping, list)):
            message += f" (got {problem['input']!r})"
        lines.append(f"  {where}: {message}" if where else f"  {message}")
    return "\n".join(lines)


def _valid_keys(loc: list[str | int], schema: type[BaseModel]) -> list[str]:
    """The field names of the section that holds the last key of ``loc``."""
    model = schema
    for part in loc[:-1]:
        if isinstance(part, int) or part not in model.model_fields:
            continue  # an index into a list of sections, or a key of a mapping of sections
        annotation = model.model_fields[part].annotation
        model = next(a for a in (annotation, *getattr(annotation, "__args__", ())) if _is_model(a))
    return list(model.model_fields)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)
