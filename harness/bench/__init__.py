"""Benchmarks (``harness bench``): speed, memory and savings of core and the harness, each
measured side by side with what it replaces, written to ``reports/benchmarks``."""

__all__ = ["BENCHMARKS", "run_benchmarks"]


def __getattr__(name: str):
    # Loading the suite loads every benchmark (torch, mlflow, optuna): only when it is used, so
    # that the retrieval benchmark's memory-measuring child (harness.bench._peak_rss) starts light.
    if name in __all__:
        from harness.bench import suite

        return getattr(suite, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
