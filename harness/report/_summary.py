"""From the tidy runs frame to one study's report: the runs that count, the per-seed values,
the summary cells with their ranking, the rSum deltas, and everything that is missing.

Pure functions over data; reading the store and writing files happen in ``_build``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from core.metric_keys import RECALLS, RSUM, TABLE_ORDER
from core.stages import FINETUNE
from harness.report._bootstrap import Delta, PairedDifference, Ranks, bootstrap_deltas, paired_difference
from harness.report._labels import lower_is_better
from harness.report._power import Power, power, shared_query_se
from harness.report._study import StudyView
from harness.tracking import names

__all__ = ["Problem", "StudyReport", "table_columns", "pick_runs", "summarise", "study_report"]

PAPER_COLUMNS = (*RECALLS, RSUM)  # always shown
_ORDER = TABLE_ORDER  # grouped: I2T block, T2I block, then rSum
FINISHED = "FINISHED"
MISSING = "MISSING"  # the status of an (arm, seed) the study asks for and the store lacks
_TIE_DECIMALS = 9  # means equal to this many decimals tie (sums in a different order differ in the last bits)


@dataclass(frozen=True)
class Problem:
    """A run that is not in the table, or only partly.

    Attributes:
        arm: the arm (for a pre-training, the arms sharing it).
        seed: the seed.
        status: FAILED, KILLED, RUNNING, MISSING, or FINISHED (with ``detail`` saying what lacks).
        stage: the run's stage.
        run_id: the run, None when missing.
        detail: what is wrong beyond the status.
    """

    arm: str
    seed: int | None
    status: str
    stage: str = FINETUNE.name
    run_id: str | None = None
    detail: str = ""

    def describe(self) -> str:
        """One line: ``depth=4, seed 2: FAILED (run 1a2b3c4d)``."""
        what = self.status if not self.detail else f"{self.status}, {self.detail}"
        stage = "" if self.stage != names.STAGE_PRETRAIN else "pre-training of "
        run = f" (run {self.run_id[:8]})" if self.run_id else ""
        return f"{stage}{self.arm}, seed {self.seed}: {what}{run}"


@dataclass(frozen=True)
class StudyReport:
    """Everything the renderers need for one study.

    Attributes:
        view: the study.
        split: the test split reported (``test``, or ``test5k`` / ``test1k`` on COCO).
        columns: metric keys shown, grouped I2T, T2I, rSum.
        cells: one row per (arm, source, metric): ``source`` is ``run`` (mean, std over seeds,
            ``n`` seeds, ``rank`` 1 = best, 2 = second, else 0) or ``reference`` (the published
            value as ``mean``, never ranked).
        values: per-seed values of the chosen runs: arm, seed, run_id, metric, value.
        history: per-epoch validation values of the chosen runs: arm, seed, metric, epoch, value
            (the metrics whose history the frame holds: ``harness report`` reads the plotted one).
        deltas: rSum delta vs the baseline per arm (the baseline has none).
        power: per arm with a delta, what the comparison can detect (:mod:`._power`).
        detect: the difference the power lines plan for (``--detect``), or None.
        problems: runs missing from the table or incomplete.
        notes: other things the reader should know (missing ranks, no study file, ...).
        n_resamples: bootstrap resamples behind each interval.
        level: the intervals' coverage.
    """

    view: StudyView
    split: str
    columns: tuple[str, ...]
    cells: pd.DataFrame
    values: pd.DataFrame
    history: pd.DataFrame
    deltas: Mapping[str, Delta] = field(default_factory=dict)
    power: Mapping[str, Power] = field(default_factory=dict)
    detect: float | None = None
    problems: tuple[Problem, ...] = ()
    notes: tuple[str, ...] = ()
    n_resamples: int = 1000
    level: float = 0.95


def table_columns(extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The paper's seven columns plus any other metric asked for, grouped by direction.

    Args:
        extra: further metric keys (e.g. ``i2t_medr``).
    """
    wanted = {*PAPER_COLUMNS, *extra}
    return tuple(m for m in _ORDER if m in wanted)


def pick_runs(frame: pd.DataFrame, view: StudyView) -> pd.DataFrame:
    """The run that counts for each (arm, seed): the newest FINISHED one, else the newest of
    any status (it is then reported as a problem); an (arm, seed) the study asks for without any
    run gets status MISSING.

    Args:
        frame: the study's rows of ``runs_frame``.
        view: the study.

    Returns:
        One row per (arm, seed), in arm order then seed: arm, seed, run_id, status.
    """
    picked = _newest(frame[(frame["stage"] != names.STAGE_PRETRAIN) & frame["arm"].notna() & frame["seed"].notna()])
    expected = pd.MultiIndex.from_product([view.arms, view.seeds], names=["arm", "seed"])
    have = pd.MultiIndex.from_frame(picked[["arm", "seed"]].astype({"seed": int}))
    lacking = expected.difference(have).to_frame(index=False).assign(run_id=None, status=MISSING)
    out = pd.concat([picked[["arm", "seed", "run_id", "status"]], lacking], ignore_index=True)
    out["seed"] = out["seed"].astype(int)
    out["order"] = out["arm"].map({arm: i for i, arm in enumerate(view.arms)})
    return out.sort_values(["order", "seed"], kind="stable").drop(columns="order").reset_index(drop=True)


def summarise(values: pd.DataFrame, view: StudyView, columns: tuple[str, ...]) -> pd.DataFrame:
    """Mean, sd and n over seeds per (arm, metric), the ranking, and the reference rows.

    Every arm of the study gets its rows (n = 0 and missing values when no run finished), so
    that no arm silently disappears from the table.

    Args:
        values: per-seed values (arm, seed, metric, value).
        view: the study.
        columns: the metrics to summarise.
    """
    values = values[values["metric"].isin(columns)]
    stats = values.groupby(["arm", "metric"])["value"].agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    grid = pd.MultiIndex.from_product([view.arms, columns], names=["arm", "metric"])
    runs = stats.reindex(grid).reset_index().assign(source="run")
    runs["n"] = runs["n"].fillna(0).astype(int)
    runs["rank"] = 0
    for metric, group in runs.groupby("metric"):
        runs.loc[group.index, "rank"] = _rank(metric, group["mean"])
    reference = pd.DataFrame(
        [
            {"arm": arm, "metric": metric, "mean": value, "std": np.nan, "n": 0, "source": "reference", "rank": 0}
            for arm, numbers in view.reference.items()
            for metric, value in numbers.items()
            if metric in columns
        ],
        columns=runs.columns,
    )
    return pd.concat([runs, reference], ignore_index=True)[["arm", "source", "metric", "mean", "std", "n", "rank"]]


def _rank(metric: str, means: pd.Series) -> pd.Series:
    """1 for the best mean of a column (every arm tying it), 2 for the second-best value, 0 for
    the rest. The second is not marked when it is also the worst: with two distinct values,
    underlining the last row would say nothing."""
    means = means.round(_TIE_DECIMALS)
    if lower_is_better(metric):
        means = -means
    distinct = np.sort(means.dropna().unique())[::-1]
    rank = pd.Series(0, index=means.index)
    if distinct.size >= 1:
        rank[means == distinct[0]] = 1
    if distinct.size >= 3:
        rank[means == distinct[1]] = 2
    return rank


def study_report(
    view: StudyView,
    frame: pd.DataFrame,
    ranks: Mapping[str, Ranks | None],
    metric: str | None = None,
    n_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    detect: float | None = None,
) -> StudyReport:
    """Assemble one study's report from its runs.

    Args:
        view: the study.
        frame: the study's rows of ``runs_frame``.
        ranks: per-query test ranks by run id (None: the run has none), for the chosen FINISHED
            runs; the deltas need them.
        metric: the plotted metric, added to the table's columns when it is not among them;
            None: the study's first report metric.
        n_resamples: bootstrap resamples.
        level: the intervals' coverage.
        seed: seeds the bootstrap.
        detect: an rSum difference to plan for: each power line says how many seeds it needs.
    """
    split = view.spec.split
    picked = pick_runs(frame, view)
    finished = picked[picked["status"] == FINISHED]
    chosen = frame[frame["run_id"].isin(finished["run_id"])]
    values = _prefixed(chosen, names.test_metric("", split)).drop(columns="step")
    history = _prefixed(chosen, names.VAL_PREFIX).rename(columns={"step": "epoch"})
    history = history[history["epoch"].notna()].reset_index(drop=True)  # val/* read as latest values only
    columns = table_columns((*view.spec.metrics, metric or view.spec.metrics[0]))
    deltas, query_se, notes = _deltas(view, finished, ranks, n_resamples, level, seed)
    problems = (*_run_problems(picked, values, split), *_pretrain_problems(frame))
    if view.baseline is not None and view.baseline not in view.arms:
        notes = (*notes, f"the baseline '{view.baseline}' is not an arm of the study: no deltas")
    return StudyReport(
        view=view,
        split=split,
        columns=columns,
        cells=summarise(values, view, columns),
        values=values,
        history=history,
        deltas=deltas,
        power=_power(view.baseline, deltas, query_se, values, detect),
        detect=detect,
        problems=problems,
        notes=(*view.notes, *notes),
        n_resamples=n_resamples,
        level=level,
    )


def _prefixed(rows: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """Rows of metrics under ``prefix``, the prefix cut off."""
    rows = rows[rows["metric"].fillna("").str.startswith(prefix)]
    rows = rows.assign(metric=rows["metric"].str.slice(len(prefix)), seed=rows["seed"].astype(int))
    return rows[["arm", "seed", "run_id", "metric", "step", "value"]].reset_index(drop=True)


def _deltas(
    view: StudyView,
    finished: pd.DataFrame,
    ranks: Mapping[str, Ranks | None],
    n_resamples: int,
    level: float,
    seed: int,
) -> tuple[dict[str, Delta], dict[str, float], tuple[str, ...]]:
    if view.baseline is None or view.baseline not in view.arms:
        return {}, {}, ()
    by_arm: dict[str, dict[int, Ranks]] = {}
    lacking = []
    for row in finished.itertuples():
        found = ranks.get(row.run_id)
        if found is None:
            lacking.append(f"{row.arm}, seed {row.seed}")
        else:
            by_arm.setdefault(row.arm, {})[int(row.seed)] = found
    notes = [f"no per-query ranks ({names.ARTIFACT_RANKS}), left out of the deltas: {'; '.join(lacking)}"] if lacking else []
    base = by_arm.get(view.baseline)
    if not base:
        return {}, {}, (*notes, f"no deltas: the baseline '{view.baseline}' has no finished run with per-query ranks")
    # Every comparison first, then one resampling for all of them (bootstrap_deltas).
    joint: dict[str, PairedDifference] = {}
    alone: dict[str, list[PairedDifference]] = {}
    for arm, runs in by_arm.items():
        if arm == view.baseline:
            continue
        try:
            joint[arm] = paired_difference(runs, base)
        except ValueError as err:  # different test sets: say so instead of a meaningless number
            notes.append(f"no delta for {arm}: {err}")
            continue
        shared = sorted(set(runs) & set(base))
        if len(shared) >= 2:  # each seed alone: the per-seed bootstrap variances
            alone[arm] = [paired_difference({s: runs[s]}, {s: base[s]}) for s in shared]
    comparisons = [*joint.values(), *(d for per_seed in alone.values() for d in per_seed)]
    found = iter(bootstrap_deltas(comparisons, n_resamples, level, seed))
    deltas = {arm: next(found) for arm in joint}
    query_se = {arm: shared_query_se(deltas[arm].se ** 2, [next(found).se ** 2 for _ in per_seed]) for arm, per_seed in alone.items()}
    return deltas, query_se, tuple(notes)


def _power(
    baseline: str | None, deltas: Mapping[str, Delta], query_se: Mapping[str, float], values: pd.DataFrame, detect: float | None
) -> dict[str, Power]:
    """Each delta's power line, from the per-seed rSum differences on the seeds it paired and the
    test queries' shared noise (one seed: the bootstrap's standard error, everything included)."""
    rsum = values[values["metric"] == RSUM].groupby(["arm", "seed"])["value"].mean()
    lines = {}
    for arm, delta in deltas.items():
        differences = [
            rsum[(arm, s)] - rsum[(baseline, s)] for s in delta.seeds if (arm, s) in rsum.index and (baseline, s) in rsum.index
        ]
        if len(differences) >= 2 and arm in query_se:
            lines[arm] = power(differences, query_se[arm], detect)
        else:
            lines[arm] = power([delta.estimate], delta.se, detect)
    return lines


def _run_problems(picked: pd.DataFrame, values: pd.DataFrame, split: str) -> list[Problem]:
    with_metrics = set(values.loc[values["metric"] == RSUM, "run_id"])
    problems = []
    for row in picked.itertuples():
        if row.status != FINISHED:
            problems.append(Problem(row.arm, int(row.seed), row.status, run_id=row.run_id))
        elif row.run_id not in with_metrics:
            problems.append(Problem(row.arm, int(row.seed), row.status, run_id=row.run_id, detail=f"no {split}/rsum"))
    return problems


def _pretrain_problems(frame: pd.DataFrame) -> list[Problem]:
    """Pre-trainings whose newest run did not finish (their arms then have no runs either)."""
    return [
        Problem(row.arm, int(row.seed), row.status, stage=names.STAGE_PRETRAIN, run_id=row.run_id)
        for row in _newest(frame[frame["stage"] == names.STAGE_PRETRAIN]).itertuples()
        if row.status != FINISHED
    ]


def _newest(frame: pd.DataFrame) -> pd.DataFrame:
    """One run per (arm, seed): the newest FINISHED one, else the newest of any status."""
    runs = frame.drop_duplicates("run_id")[["arm", "seed", "run_id", "status", "start_time"]]
    runs = runs.assign(finished=runs["status"] == FINISHED).sort_values(["finished", "start_time"], kind="stable")
    return runs.groupby(["arm", "seed"], sort=False).tail(1)
