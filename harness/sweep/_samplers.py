"""Samplers and pruners, picked by name from a dict; their settings recorded in full.

A spec names a sampler (``tpe`` by default) and a pruner (``median`` by default) and may pass
constructor arguments (``args``). Arguments are checked against the Optuna class's signature when
the spec is loaded, so a typo fails before anything runs. The settings recorded on the sweep's
parent run are the class's whole signature with the spec's values filled in, and the Optuna
version, so a run read later says which defaults it ran with (Optuna 5 changed TPE's).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler

from core.errors import did_you_mean

__all__ = ["SAMPLERS", "PRUNERS", "check_args", "make_sampler", "make_pruner", "settings", "grid_space"]

SAMPLERS: dict[str, type[BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "grid": optuna.samplers.GridSampler,  # every value of a space of choices / stepped ranges
    "cmaes": optuna.samplers.CmaEsSampler,  # needs the `cmaes` package
    "gp": optuna.samplers.GPSampler,  # Gaussian process (torch + scipy)
    "qmc": optuna.samplers.QMCSampler,
}
PRUNERS: dict[str, type[BasePruner]] = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "none": optuna.pruners.NopPruner,
}
# Arguments the harness sets itself: the sampler's seed (spec `sampler.seed`, one per trial) and
# the grid (from the space); hyperband's max_resource defaults to the objective stage's epochs.
_OWN_ARGS = {"seed", "search_space"}


def check_args(kind: str, name: str, args: Mapping[str, Any]) -> None:
    """Raise ValueError for an unknown ``name`` or an argument ``name``'s class does not take.

    Args:
        kind: ``sampler`` or ``pruner``.
        name: the registry name.
        args: the constructor arguments the spec gives.
    """
    registry = SAMPLERS if kind == "sampler" else PRUNERS
    if name not in registry:
        raise ValueError(f"unknown {kind} '{name}'{did_you_mean(name, registry)}; known: {', '.join(registry)}")
    valid = [p for p in inspect.signature(registry[name]).parameters if p not in _OWN_ARGS]
    for arg in args:
        if arg not in valid:
            raise ValueError(f"{kind} '{name}' takes no argument '{arg}'{did_you_mean(arg, valid)}; it takes: {', '.join(valid) or 'none'}")


def grid_space(distributions: Mapping[str, BaseDistribution]) -> dict[str, list[Any]]:
    """Each parameter's values for the grid sampler; a float range needs a ``step``.

    Raises:
        ValueError: a float range without a step.
    """
    grid = {}
    for key, dist in distributions.items():
        if isinstance(dist, CategoricalDistribution):
            grid[key] = list(dist.choices)
        elif isinstance(dist, IntDistribution):
            grid[key] = list(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, FloatDistribution) and dist.step is not None:
            count = int(round((dist.high - dist.low) / dist.step)) + 1
            grid[key] = [dist.low + i * dist.step for i in range(count)]
        else:
            raise ValueError(f"the grid sampler needs choices or a step for '{key}' (a float range without a step)")
    return grid


def make_sampler(name: str, args: Mapping[str, Any], seed: int | None, distributions: Mapping[str, BaseDistribution]) -> BaseSampler:
    """A sampler by name.

    Args:
        name: a key of :data:`SAMPLERS`.
        args: constructor arguments.
        seed: the sampler's seed (None: unseeded).
        distributions: the search space (the grid sampler's values).
    """
    kwargs = {**args, "seed": seed}
    if name == "grid":
        kwargs["search_space"] = grid_space(distributions)
    return SAMPLERS[name](**kwargs)


def make_pruner(name: str, args: Mapping[str, Any], epochs: int) -> BasePruner:
    """A pruner by name; hyperband's ``max_resource`` defaults to the stage's ``epochs``.

    Args:
        name: a key of :data:`PRUNERS`.
        args: constructor arguments.
        epochs: epochs of the stage whose validation metric is reported (one step each).
    """
    kwargs = dict(args)
    if name == "hyperband":
        kwargs.setdefault("max_resource", max(1, epochs))
    return PRUNERS[name](**kwargs)


def settings(kind: str, name: str, args: Mapping[str, Any], **own: Any) -> dict[str, Any]:
    """The class's whole signature with the given values: what to record with a sweep.

    Args:
        kind: ``sampler`` or ``pruner``.
        name: the registry name.
        args: the spec's constructor arguments.
        own: arguments the harness sets (the seed).
    """
    cls = (SAMPLERS if kind == "sampler" else PRUNERS)[name]
    values = {
        p.name: p.default
        for p in inspect.signature(cls).parameters.values()
        if p.default is not inspect.Parameter.empty and p.name != "search_space"
    }
    values.update(args)
    values.update(own)
    return {"name": name, "class": f"{cls.__module__}.{cls.__qualname__}", "optuna": optuna.__version__, "settings": _jsonable(values)}


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        try:
            json.dumps(value)
            out[key] = value
        except TypeError:  # callables and objects: their name says what ran
            out[key] = getattr(value, "__qualname__", None) or repr(value)
    return out


