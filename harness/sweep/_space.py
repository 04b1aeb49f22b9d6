"""The search space: each config key's Optuna distribution, and a trial's values for all of them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

__all__ = ["distribution", "suggest"]


def distribution(kind: str, low: Any, high: Any, log: bool, step: Any, choices: Any) -> BaseDistribution:
    """One parameter's distribution (``kind``: float | int | categorical); Optuna's own checks
    raise ValueError for a bad range (low > high, log with a step, log of a value <= 0)."""
    return _BUILD[kind](low, high, log, step, choices)


def suggest(trial: optuna.Trial, distributions: Mapping[str, BaseDistribution]) -> dict[str, Any]:
    """Sample every key of the space through the trial's public ``suggest_*`` calls.

    Args:
        trial: the running trial.
        distributions: ``{dotted.key: distribution}``.

    Returns:
        ``{dotted.key: value}``, in the space's order.
    """
    return {key: _SUGGEST[type(dist)](trial, key, dist) for key, dist in distributions.items()}


def _needs(kind: str, low: Any, high: Any, choices: Any, forbidden: tuple[str, ...]) -> None:
    given = {"low": low, "high": high, "choices": choices}
    if kind == "categorical":
        if not choices:
            raise ValueError("a categorical parameter needs `choices` (a non-empty list)")
    elif low is None or high is None:
        raise ValueError(f"a {kind} parameter needs `low` and `high`")
    extra = [name for name in forbidden if given.get(name) is not None]
    if extra:
        raise ValueError(f"a {kind} parameter takes no {', '.join(extra)}")


def _float(low, high, log, step, choices) -> FloatDistribution:
    _needs("float", low, high, choices, ("choices",))
    return FloatDistribution(float(low), float(high), log=log, step=None if step is None else float(step))


def _int(low, high, log, step, choices) -> IntDistribution:
    _needs("int", low, high, choices, ("choices",))
    if any(isinstance(v, float) and not v.is_integer() for v in (low, high, step) if v is not None):
        raise ValueError(f"an int parameter needs whole numbers (low={low}, high={high}, step={step})")
    return IntDistribution(int(low), int(high), log=log, step=1 if step is None else int(step))


def _categorical(low, high, log, step, choices) -> CategoricalDistribution:
    _needs("categorical", low, high, choices, ("low", "high"))
    if log or step is not None:
        raise ValueError("a categorical parameter takes no log or step")
    return CategoricalDistribution(list(choices))


_BUILD: dict[str, Callable[..., BaseDistribution]] = {"float": _float, "int": _int, "categorical": _categorical}
_SUGGEST: dict[type, Callable[[optuna.Trial, str, Any], Any]] = {
    FloatDistribution: lambda t, key, d: t.suggest_float(key, d.low, d.high, step=d.step, log=d.log),
    IntDistribution: lambda t, key, d: t.suggest_int(key, d.low, d.high, step=d.step, log=d.log),
    CategoricalDistribution: lambda t, key, d: t.suggest_categorical(key, d.choices),
}
