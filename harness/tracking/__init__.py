"""Tracking: the MLflow store (this package is the only one that imports mlflow) and, in
``names``, every name the harness writes there."""

__all__ = ["RunStatus", "RunKey", "Claim", "Tracker", "init_store", "probe_store", "default_tracking_uri", "provenance", "safe_uri"]


def __getattr__(name: str):
    # mlflow takes seconds to import: load the store only when one of its names is used, so that
    # loading and planning a study (which read `names`) and `harness --help` stay fast.
    if name == "provenance":  # git and versions only: no mlflow
        from harness.tracking.lineage import provenance

        return provenance
    if name in __all__:
        from harness.tracking import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
