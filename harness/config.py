"""Config resolution: setting file -> study base -> arm values -> ``--set``, in one function.

Each value remembers where it came from, so an error names the key path, the bad value, its
source and, for a typo, the closest valid key.
"""

from __future__ import annotations

import copy
import difflib
import functools
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from core.config import Config
from core.errors import UserError, did_you_mean
from core.files import read_utf8

__all__ = [
    "DEFAULT_SETTING",
    "cluster_section",
    "SETTINGS_DIR",
    "Layer",
    "resolve",
    "parse_set",
    "load_yaml",
    "setting_path",
    "flatten",
    "config_to_yaml",
]

DEFAULT_SETTING = "cpu-small"
CLUSTER_KEY = "cluster"  # a setting's cluster resources (harness.cluster): not part of the config tree
SETTINGS_DIR = Path(__file__).resolve().parents[1] / "studies" / "settings"
Layer = tuple[str, Mapping[str, Any]]  # (source label, {dotted.key: value})


def resolve(
    setting: str | os.PathLike | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    *,
    layers: Iterable[Layer] = (),
) -> Config:
    """Resolve the typed config tree.

    Args:
        setting: a setting name (``studies/settings/NAME.yaml``) or a YAML path; default ``cpu-small``.
        overrides: ``--set`` style ``KEY=VALUE`` strings (values parsed as YAML scalars) or a
            ``{dotted.key: value}`` mapping, applied last.
        layers: ``(source, {dotted.key: value})`` applied in order between setting and overrides
            (a study's base, then an arm's values).
    """
    tree: dict[str, Any] = {}
    sources: dict[str, str] = {}
    path = setting_path(setting if setting is not None else DEFAULT_SETTING)
    for key, value, source in _setting_items(path, seen=()):
        _apply(tree, sources, key, value, source)
    if not isinstance(overrides, Mapping):
        overrides = dict(parse_set(item) for item in overrides)
    for source, values in [*layers, ("--set", overrides)]:
        for key, value in values.items():
            _apply(tree, sources, key, value, source)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise UserError(_explain(err, sources)) from None


def parse_set(item: str) -> tuple[str, Any]:
    """``'model.decoder.depth=4'`` -> ``('model.decoder.depth', 4)`` (value parsed as YAML)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set expects KEY=VALUE, got {item!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise UserError(f"--set {key}: cannot parse value {raw!r}: {err}") from None
    return key.strip(), value


def load_yaml(path: str | os.PathLike) -> Any:
    """Read a YAML file with the safe loader; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    return _parse_yaml(str(path), read_utf8(path))


def setting_path(setting: str | os.PathLike) -> Path:
    """A setting name or path -> the YAML file; an unknown name lists the known ones."""
    path = Path(setting)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise UserError(f"setting file not found: {path}")
        return path
    named = SETTINGS_DIR / f"{setting}.yaml"
    if named.is_file():
        return named
    known = sorted(p.stem for p in SETTINGS_DIR.glob("*.yaml"))
    raise UserError(f"unknown setting '{setting}'{did_you_mean(str(setting), known)}; known settings: {', '.join(known)}")


def flatten(tree: Mapping[str, Any] | BaseModel, prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{dotted.key: leaf}``, descending only into config sections (dict-valued
    fields such as ``backbone_args`` stay leaves). Used for merging and for MLflow params."""
    if isinstance(tree, BaseModel):
        tree = tree.model_dump(mode="json")
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and _is_section(dotted):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def config_to_yaml(config: Config) -> str:
    """The resolved config as YAML (what checkpoints and MLflow artifacts carry)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def cluster_section(setting: str | os.PathLike | None = None) -> dict[str, Any]:
    """A setting's ``cluster:`` section (the cluster resources of ``harness run --executor
    slurm``), over the sections of the settings it extends; ``{}`` when none has one."""
    section: dict[str, Any] = {}
    for path, raw in _setting_chain(setting_path(setting if setting is not None else DEFAULT_SETTING), ()):
        found = raw.get(CLUSTER_KEY)
        if found is not None and not isinstance(found, Mapping):
            raise UserError(f"{path}: 'cluster' must be a mapping of options (partition, time, gpus_per_node, ...)")
        section.update(found or {})
    return section


# ---------------------------------------------------------------------------------- internals
def _setting_chain(path: Path, seen: tuple[Path, ...]) -> list[tuple[Path, dict[str, Any]]]:
    """A setting file and the ones it ``extends:``, as (path, mapping), the extended one first."""
    if path.resolve() in seen:
        raise UserError(f"{path}: 'extends' cycle through {', '.join(map(str, seen))}")
    raw = _read_setting(path) or {}
    if not isinstance(raw, Mapping):
        raise UserError(f"{path}: a setting must be a mapping of config sections")
    raw = dict(raw)
    chain = _setting_chain(setting_path(raw.pop("extends")), (*seen, path.resolve())) if "extends" in raw else []
    return [*chain, (path, raw)]


def _setting_items(path: Path, seen: tuple[Path, ...]) -> list[tuple[str, Any, str]]:
    """A setting file as (dotted key, value, source); ``extends: NAME`` is read first."""
    items: list[tuple[str, Any, str]] = []
    for file, raw in _setting_chain(path, seen):
        raw = {key: value for key, value in raw.items() if key != CLUSTER_KEY}  # where jobs run, not what they compute
        items += [(key, value, f"setting {file.name}") for key, value in flatten(raw).items()]
    return items


def _read_setting(path: Path) -> Any:
    """The parsed setting file (a copy: callers may change it), parsed once per content.

    Planning resolves every arm of a study, each from the same setting file: parsing it again
    per arm was 90% of ``harness run --dry-run`` on a 1,000-arm study (cProfile). Reading the
    bytes is cheap; the cache is keyed on them, so an edited file is parsed again.
    """
    if not path.is_file():
        return load_yaml(path)  # raises the missing-file error
    return copy.deepcopy(_parse_setting(str(path), read_utf8(path)))


def _parse_yaml(name: str, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"{name}: invalid YAML: {err}") from None


_parse_setting = functools.lru_cache(maxsize=64)(_parse_yaml)


# Planning resolves every arm of a study: these walks of the config classes run tens of
# thousands of times for a large study, always on the same few hundred keys, so they are cached.
@functools.lru_cache(maxsize=4096)
def _field_model(dotted: str) -> type[BaseModel] | None:
    """The section class at a dotted path, or None if the path is not a section."""
    model: type[BaseModel] = Config
    for part in dotted.split(".") if dotted else []:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _is_section(dotted: str) -> bool:
    return _field_model(dotted) is not None


@functools.lru_cache(maxsize=4096)
def _unknown_part(key: str) -> tuple[int, type[BaseModel]] | None:
    """Where a dotted key leaves the config tree: (index of the unknown part, the section that
    lacks it), or None for a valid key."""
    model: type[BaseModel] = Config
    for depth, part in enumerate(key.split(".")):
        if part not in model.model_fields:
            return depth, model
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None  # a leaf (dict-valued leaves take any sub-keys)
        model = annotation
    return None


def _check_key(key: str, source: str) -> None:
    """Unknown dotted keys fail here, naming the closest valid key."""
    unknown = _unknown_part(key)
    if unknown is None:
        return
    depth, model = unknown
    parts = key.split(".")
    part = parts[depth]
    where = ".".join(parts[:depth]) or "the top level"
    hint = difflib.get_close_matches(part, list(model.model_fields), n=1)
    message = [f"unknown config key '{key}' (from {source}): no '{part}' in {where}"]
    if hint:
        message.append(f"did you mean '{'.'.join([*parts[:depth], hint[0]])}'?")
    message.append(f"valid keys there: {', '.join(model.model_fields)}")
    raise UserError("; ".join(message))


def _apply(tree: dict[str, Any], sources: dict[str, str], key: str, value: Any, source: str) -> None:
    _check_key(key, source)
    if isinstance(value, Mapping) and _is_section(key):
        for sub, subvalue in flatten(value, key + ".").items():
            _apply(tree, sources, sub, subvalue, source)
        return
    node = tree
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    sources.pop(key, None)  # re-insert: the dict's order is the order values were last set
    sources[key] = source


def _explain(err: ValidationError, sources: Mapping[str, str]) -> str:
    lines = ["invalid config:"]
    for problem in err.errors():
        path = ".".join(str(p) for p in problem["loc"])
        source = next(
            (sources[k] for k in sorted(sources, key=len, reverse=True) if path.startswith(k)),
            None,
        )
        if source is None:  # a cross-field check: name the last source that set a key inside it
            inside = [s for k, s in sources.items() if k.startswith(path)]
            source = inside[-1] if inside else "defaults"
        value = problem.get("input")
        shown = "" if isinstance(value, Mapping) else f" got {value!r};"
        lines.append(f"  {path or '<root>'}:{shown} {problem['msg']} (from {source})")
    return "\n".join(lines)
