"""``harness sweep --optuna``: Optuna search over config keys, each trial a harness run.

A spec (:func:`load_sweep`) names the space over config keys, the objective, the budget, the
sampler and the pruner; :func:`run_sweep` runs (or resumes) it with any number of workers on an
Optuna journal file (default) or an RDB storage, tracking the sweep and every trial in MLflow.
"""

from harness.sweep._export import best_study, export_best
from harness.sweep._run import Snapshot, SweepReporter, SweepResult, run_sweep, snapshot
from harness.sweep._samplers import PRUNERS, SAMPLERS
from harness.sweep._space import suggest
from harness.sweep._spec import DEFAULT_SPEC, ObjectiveSpec, ParamSpec, PrunerSpec, SamplerSpec, SweepSpec, load_sweep
from harness.sweep._storage import Counts, counts, open_storage, sweep_dir

__all__ = [
    "SweepSpec", "ParamSpec", "ObjectiveSpec", "SamplerSpec", "PrunerSpec", "load_sweep", "DEFAULT_SPEC",
    "run_sweep", "SweepResult", "SweepReporter", "Snapshot", "snapshot", "Counts", "counts",
    "open_storage", "sweep_dir", "export_best", "best_study", "suggest", "SAMPLERS", "PRUNERS",
]
