"""`harness report`: the store's tidy frame, the summary table and its renderers (.tex, .md,
.csv), the paired bootstrap delta, the plots, and the files written and logged.

The store is the fixture of ``report_fixtures`` (design.md's layout, numbers computed from
synthetic per-query ranks); the expected numbers come from what the fixture logged.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from mlflow import MlflowClient
from report_fixtures import (
    DEPTH_FAILED,
    DEPTH_MISSING,
    DEPTH_REPLAYED,
    DEPTH_RETRIED,
    DEPTH_STUDY,
    DEPTH_VALUES,
    ESCAPE_LABELS,
    ESCAPE_STUDY,
    EPOCHS,
    arm_ranks,
    fill_store,
    latent_ranks,
    report_store,  # noqa: F401  (a fixture)
)

from core.errors import UserError
from core.metrics import metrics_from_ranks
from harness.report import (
    Delta,
    StudyReport,
    build_report,
    human_name,
    latex_escape,
    load_reports,
    markdown_escape,
    paired_bootstrap_rsum,
    plot_ablation,
    plot_training_curves,
    study_report,
    study_view,
    summarise,
    to_csv,
    to_latex,
    to_markdown,
)
from harness.tracking import names
from harness.tracking.read import FRAME_COLUMNS, _sql_store, load_ranks, runs_frame, stored_studies

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

COLUMNS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")
DEPTH_ARMS = ("depth=0", "depth=1", "depth=2", "depth=4")


@pytest.fixture(scope="module")
def reports(report_store) -> dict[str, StudyReport]:  # noqa: F811
    return {r.view.name: r for r in load_reports(report_store.uri)}


def expected_stats(store, study: str, arm: str, metric: str) -> tuple[float, float, int]:
    """Mean, sd and n over the FINISHED runs the fixture logged for (study, arm)."""
    values = [m[metric] for (s, a, _), m in store.test.items() if s == study and a == arm]
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else float("nan"), len(values)


# ------------------------------------------------------------------------------- the frame
def test_runs_frame_is_tidy_with_history_for_val_and_latest_for_test(report_store):  # noqa: F811
    frame = runs_frame(report_store.uri, [DEPTH_STUDY])
    assert tuple(frame.columns) == FRAME_COLUMNS
    run = report_store.runs[(DEPTH_STUDY, "depth=2", 1)]
    rows = frame[frame["run_id"] == run]
    assert set(rows[["study", "arm", "seed", "stage", "status"]].itertuples(index=False, name=None)) == {
        (DEPTH_STUDY, "depth=2", 1, "finetune", "FINISHED")
    }
    val = rows[rows["metric"] == "val/rsum"].sort_values("step")
    assert val["step"].tolist() == list(range(EPOCHS))
    assert val["value"].tolist() == pytest.approx([m["rsum"] for m in report_store.val[(DEPTH_STUDY, "depth=2", 1)]])
    test = rows[rows["metric"] == "test/rsum"]
    assert test["value"].tolist() == pytest.approx([report_store.test[(DEPTH_STUDY, "depth=2", 1)]["rsum"]])
    assert test["step"].isna().all()
    assert set(frame["stage"]) == {"finetune", names.STAGE_PRETRAIN}  # the parent run is not a row


def test_runs_frame_takes_the_latest_value_of_an_epoch_logged_twice(report_store):  # noqa: F811
    frame = runs_frame(report_store.uri, [DEPTH_STUDY])
    run = report_store.runs[(DEPTH_STUDY, *DEPTH_REPLAYED)]
    epoch1 = frame[(frame["run_id"] == run) & (frame["metric"] == "val/rsum") & (frame["step"] == 1)]
    assert epoch1["value"].tolist() == pytest.approx([report_store.val[(DEPTH_STUDY, *DEPTH_REPLAYED)][1]["rsum"]])


def test_runs_frame_keeps_a_run_that_logged_no_metric(report_store):  # noqa: F811
    frame = runs_frame(report_store.uri, [DEPTH_STUDY])
    early = frame[frame["run_id"] == report_store.failed[(DEPTH_STUDY, *DEPTH_RETRIED)]]
    assert len(early) == 1 and early["metric"].isna().all() and early["status"].tolist() == ["FAILED"]


def test_a_sql_store_is_read_into_the_same_frame_as_through_the_mlflow_client(tmp_path, monkeypatch):
    # The SQL store is read with column queries; every other store through MlflowClient.
    store = fill_store(tmp_path)
    client = MlflowClient(tracking_uri=store.uri)
    experiment = client.get_experiment_by_name(DEPTH_STUDY).experiment_id
    run = store.runs[(DEPTH_STUDY, "depth=2", 1)]
    client.log_metric(run, "val/rsum", float("nan"), step=EPOCHS)  # a diverged epoch
    client.log_metric(run, "test/i2t_r1", float("nan"))
    deleted = client.create_run(experiment, tags={names.TAG_STAGE: "finetune", names.TAG_ARM: "depth=0"}).info.run_id
    client.log_metric(deleted, "test/rsum", 1.0)
    client.delete_run(deleted)
    client.create_run(experiment, tags={names.TAG_ARM: "depth=0"})  # no stage tag: not a stage run
    for arm in ("depth=0", "depth=1"):  # started in the same millisecond: the run id breaks the tie
        tied = client.create_run(experiment, start_time=1, tags={names.TAG_STAGE: "finetune", names.TAG_ARM: arm}).info.run_id
        client.log_metric(tied, "Val/rsum", 1.0, step=0)  # not val/: no history, whatever the case rules
    assert _sql_store(client) is not None  # the column queries are what is compared
    for history in (["val/rsum"], [], None):
        frame = runs_frame(store.uri, history=history)
        with monkeypatch.context() as patch:
            patch.setattr("harness.tracking.read._sql_store", lambda client: None)
            pd.testing.assert_frame_equal(frame, runs_frame(store.uri, history=history))
    assert deleted not in set(frame["run_id"])
    nan_epoch = frame[(frame["run_id"] == run) & (frame["metric"] == "val/rsum") & (frame["step"] == EPOCHS)]
    assert nan_epoch["value"].isna().all() and len(nan_epoch) == 1


def test_stored_studies_recover_order_baseline_and_study_file(report_store):  # noqa: F811
    depth, escapes = stored_studies(report_store.uri)
    assert depth.name == DEPTH_STUDY and depth.parent_run_id == report_store.parents[DEPTH_STUDY]
    assert depth.arm_order == DEPTH_ARMS and depth.baseline == "depth=0"
    assert "model.decoder.depth: [0, 1, 2, 4]" in depth.study_yaml
    assert escapes.arm_order == ESCAPE_LABELS


def test_unknown_study_names_the_studies_in_the_store(report_store):  # noqa: F811
    with pytest.raises(UserError, match=rf"no study 'depth_studdy'.*did you mean '{DEPTH_STUDY}'.*{DEPTH_STUDY}, {ESCAPE_STUDY}"):
        runs_frame(report_store.uri, ["depth_studdy"])


def test_missing_and_empty_stores_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no tracking store at"):
        stored_studies(f"sqlite:///{tmp_path / 'absent.db'}")
    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # creates the schema, no study
    with pytest.raises(UserError, match="no studies in the tracking store"):
        build_report(uri, out_dir=tmp_path)


def test_load_ranks_returns_the_logged_arrays_and_none_without_them(report_store):  # noqa: F811
    key = (DEPTH_STUDY, "depth=1", 2)
    ranks = load_ranks(report_store.uri, report_store.runs[key])
    np.testing.assert_array_equal(ranks["i2t"], report_store.ranks[key]["i2t"])
    np.testing.assert_array_equal(ranks["t2i"], report_store.ranks[key]["t2i"])
    assert load_ranks(report_store.uri, report_store.failed[(DEPTH_STUDY, *DEPTH_FAILED)]) is None


# ------------------------------------------------------------------------------ the summary
def test_table_rows_follow_the_arm_order_with_seed_counts(reports):
    cells = reports[DEPTH_STUDY].cells
    runs = cells[cells["source"] == "run"]
    assert tuple(dict.fromkeys(runs["arm"])) == DEPTH_ARMS
    # depth=1 lacks seed 1 (never ran), depth=4 seed 2 failed; depth=2 seed 0's retry counts.
    assert runs.groupby("arm")["n"].max().to_dict() == {"depth=0": 3, "depth=1": 2, "depth=2": 3, "depth=4": 2}


def test_cells_are_mean_and_sd_over_seeds_of_the_logged_test_metrics(reports, report_store):  # noqa: F811
    cells = reports[DEPTH_STUDY].cells.set_index(["source", "arm", "metric"])
    for arm in DEPTH_ARMS:
        for metric in COLUMNS:
            mean, sd, n = expected_stats(report_store, DEPTH_STUDY, arm, metric)
            cell = cells.loc[("run", arm, metric)]
            assert (cell["mean"], cell["std"], cell["n"]) == (pytest.approx(mean), pytest.approx(sd), n)


def test_failed_and_missing_runs_are_listed_never_dropped(reports, report_store):  # noqa: F811
    problems = {(p.arm, p.seed): p for p in reports[DEPTH_STUDY].problems}
    assert set(problems) == {DEPTH_FAILED, DEPTH_MISSING}  # the retried failure is not a problem
    assert problems[DEPTH_FAILED].status == "FAILED"
    assert problems[DEPTH_FAILED].run_id == report_store.failed[(DEPTH_STUDY, *DEPTH_FAILED)]
    assert problems[DEPTH_MISSING].status == "MISSING"
    report = reports[DEPTH_STUDY]
    for text in (to_latex(report), to_markdown(report)):
        assert "Not in the table" in text
        assert "depth=4, seed 2: FAILED" in text and "depth=1, seed 1: MISSING" in text


def test_a_failed_pretraining_is_listed(report_store, tmp_path):  # noqa: F811
    frame = runs_frame(report_store.uri, [DEPTH_STUDY])
    pretrain = frame["stage"] == names.STAGE_PRETRAIN
    frame.loc[pretrain & (frame["seed"] == 1), "status"] = "FAILED"
    stored = stored_studies(report_store.uri, [DEPTH_STUDY])[0]
    report = study_report(study_view(stored, frame), frame, {})
    assert [p.describe().split(":")[0] for p in report.problems if p.stage == names.STAGE_PRETRAIN] == [
        "pre-training of depth=0, depth=1, depth=2, depth=4, seed 1"
    ]


def test_ties_share_the_best_and_a_last_place_second_is_not_marked():
    view = _view(("a", "b", "c", "d"))
    values = pd.DataFrame(
        [("a", 0, 80.0), ("b", 0, 80.0), ("c", 0, 75.0), ("d", 0, 70.0), ("a", 1, 80.0), ("b", 1, 80.0)],
        columns=["arm", "seed", "value"],
    ).assign(metric="rsum")
    ranks = summarise(values, view, ("rsum",)).set_index("arm")["rank"].to_dict()
    assert ranks == {"a": 1, "b": 1, "c": 2, "d": 0}
    two = summarise(values[values["arm"].isin(["a", "c"])], _view(("a", "c")), ("rsum",))
    assert two.set_index("arm")["rank"].to_dict() == {"a": 1, "c": 0}


def test_lower_ranks_are_better_for_median_rank_columns():
    values = pd.DataFrame([("a", 0, 3.0), ("b", 0, 1.0), ("c", 0, 2.0)], columns=["arm", "seed", "value"])
    ranks = summarise(values.assign(metric="t2i_medr"), _view(("a", "b", "c")), ("t2i_medr",))
    assert ranks.set_index("arm")["rank"].to_dict() == {"a": 0, "b": 1, "c": 2}


def test_reference_rows_are_marked_and_never_ranked(reports):
    report = reports[DEPTH_STUDY]
    reference = report.cells[report.cells["source"] == "reference"]
    assert set(reference["arm"]) == {"depth=0", "depth=4"} and (reference["rank"] == 0).all()
    # The published rSum (495) beats every run; the runs' best is still the best run.
    best = report.cells[(report.cells["metric"] == "rsum") & (report.cells["rank"] == 1)]
    assert best["arm"].tolist() == ["depth=2"] and best["source"].tolist() == ["run"]
    md = to_markdown(report)
    assert "| depth=4 † | – | 75.5 |" in md and "Published numbers: made-up numbers" in md


def test_a_store_without_the_study_file_still_reports_from_the_runs(report_store):  # noqa: F811
    stored = stored_studies(report_store.uri, [DEPTH_STUDY])[0]
    bare = dataclasses.replace(stored, study_yaml=None, arm_order=(), baseline=None)
    frame = runs_frame(report_store.uri, [DEPTH_STUDY])
    view = study_view(bare, frame)
    assert set(view.arms) == set(DEPTH_ARMS) and view.seeds == (0, 1, 2) and not view.reference
    report = study_report(view, frame, {})
    assert not report.deltas  # no baseline known
    assert report.notes == (f"the parent run has no {names.ARTIFACT_STUDY}: default report options, no reference rows",)
    assert report.notes[0] in to_markdown(report)


def test_seeds_a_run_asked_for_with_the_seeds_option_count_as_the_studys(report_store):  # noqa: F811
    stored = stored_studies(report_store.uri, [DEPTH_STUDY])[0]
    frame = runs_frame(report_store.uri, [DEPTH_STUDY])
    asked = dataclasses.replace(stored, seeds=(0, 1, 2, 3))  # `harness run --seeds 0,1,2,3`
    report = study_report(study_view(asked, frame), frame, {})
    assert ("depth=0", 3, "MISSING") in {(p.arm, p.seed, p.status) for p in report.problems}


# --------------------------------------------------------------------------------- LaTeX
def latex_rows(tex: str) -> dict[str, list[str]]:
    """Data rows of the tabular: label -> cells (after the label)."""
    body = tex.split(r"\midrule", 1)[1].split(r"\bottomrule")[0]
    rows = {}
    for line in body.splitlines():
        if line.endswith(r"\\") and not line.startswith(r"\multicolumn"):
            cells = [c.strip() for c in line[: -2].split(" & ")]
            rows[cells[0]] = cells[1:]
    return rows


def test_latex_has_grouped_headers_booktabs_caption_and_label(reports):
    tex = to_latex(reports[DEPTH_STUDY])
    assert r"\toprule" in tex and r"\bottomrule" in tex and tex.count(r"\midrule") == 2
    assert r"\multicolumn{3}{c}{I2T} & \multicolumn{3}{c}{T2I}" in tex
    assert r"\cmidrule(lr){3-5} \cmidrule(lr){6-8}" in tex
    assert r"Arm & $n$ & R@1 & R@5 & R@10 & R@1 & R@5 & R@10 & rSum & $\Delta$rSum [95\% CI] \\" in tex
    assert r"\label{tab:depth_study}" in tex and r"\caption{Study \texttt{depth\_study}" in tex
    assert "mean $\\pm$ sd over seeds" in tex
    assert not tex.startswith(r"\documentclass")


def test_latex_rows_follow_the_arm_order_then_the_marked_references(reports):
    rows = latex_rows(to_latex(reports[DEPTH_STUDY]))
    assert list(rows) == [*DEPTH_ARMS, r"depth=0\textsuperscript{\dag}", r"depth=4\textsuperscript{\dag}"]
    assert [rows[arm][0] for arm in DEPTH_ARMS] == ["3", "2", "3", "2"]  # the n column


def test_latex_bolds_the_best_and_underlines_the_second_mean_per_column(reports, report_store):  # noqa: F811
    rows = latex_rows(to_latex(reports[DEPTH_STUDY]))
    for col, metric in enumerate(COLUMNS, start=1):
        means = {arm: expected_stats(report_store, DEPTH_STUDY, arm, metric)[0] for arm in DEPTH_ARMS}
        order = sorted(means, key=means.get, reverse=True)
        for arm in DEPTH_ARMS:
            cell = rows[arm][col]
            mean, sd, _ = expected_stats(report_store, DEPTH_STUDY, arm, metric)
            text = f"{mean:.1f} $\\pm$ {sd:.1f}"
            wanted = {order[0]: rf"\textbf{{{text}}}", order[1]: rf"\underline{{{text}}}"}.get(arm, text)
            assert cell == wanted, (metric, arm)


def test_latex_escapes_every_label(reports):
    rows = latex_rows(to_latex(reports[ESCAPE_STUDY]))
    assert list(rows) == [r"l2\_norm", r"50\% tokens", r"a \& b \#1", r"\textasciitilde{}x\textasciicircum{}2\textbackslash{}y"]


def test_latex_escape_makes_special_characters_text():
    assert latex_escape(r"a_b 50% & #1 ~x^2\y {z} $") == (
        r"a\_b 50\% \& \#1 \textasciitilde{}x\textasciicircum{}2\textbackslash{}y \{z\} \$"
    )


def test_standalone_latex_compiles_and_the_pdf_shows_the_table(reports, tmp_path):
    assert shutil.which("pdflatex") and shutil.which("pdftotext"), "needs pdflatex (TeX Live) and pdftotext (poppler-utils)"
    for name in (DEPTH_STUDY, ESCAPE_STUDY):
        (tmp_path / f"{name}.tex").write_text(to_latex(reports[name], standalone=True))
        done = subprocess.run(
            ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", f"{name}.tex"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, done.stdout[-3000:]
        text = subprocess.run(["pdftotext", "-layout", f"{name}.pdf", "-"], cwd=tmp_path, capture_output=True, text=True).stdout
        assert "Table 1:" in text and "I2T" in text and "T2I" in text and "rSum" in text
    assert all(label in text for label in ESCAPE_LABELS)  # the last one: label_escapes
    rsum = reports[ESCAPE_STUDY].cells.query("arm == 'a & b #1' and metric == 'rsum'")["mean"].item()
    assert f"{rsum:.1f}" in text


# ----------------------------------------------------------------------- Markdown and CSV
def test_markdown_marks_best_and_second_and_escapes_labels(reports):
    md = to_markdown(reports[ESCAPE_STUDY])
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| Arm | n | I2T R@1 | I2T R@5 | I2T R@10 | T2I R@1 |")
    labels = [line.split(" | ")[0].removeprefix("| ") for line in lines[2:]]
    assert labels == [r"l2\_norm", "50% tokens", r"a & b \#1", r"\~x\^2\\y"]
    assert "**228.3**" in lines[4] and "<u>198.3</u>" in lines[3]
    assert markdown_escape("a|b") == r"a\|b"


def test_csv_holds_the_unrounded_numbers_and_deltas(reports, report_store):  # noqa: F811
    table = pd.read_csv(io.StringIO(to_csv(reports[DEPTH_STUDY])))
    runs = table[table["source"] == "run"].set_index("arm")
    mean, sd, n = expected_stats(report_store, DEPTH_STUDY, "depth=2", "rsum")
    assert runs.at["depth=2", "rsum_mean"] == pytest.approx(mean) and runs.at["depth=2", "rsum_std"] == pytest.approx(sd)
    assert runs.at["depth=2", "n"] == n and runs.at["depth=2", "rsum_rank"] == 1
    assert runs.at["depth=0", "baseline"] and pd.isna(runs.at["depth=0", "rsum_delta"])
    assert runs.at["depth=2", "rsum_delta_low"] > 0
    assert table[table["source"] == "reference"]["rsum_delta"].isna().all()


# ------------------------------------------------------------------------------ bootstrap
def ranks_of(factor: float, seed: int, salt: int = 0) -> dict[str, np.ndarray]:
    return arm_ranks(latent_ranks(seed, salt), factor)


def test_bootstrap_interval_excludes_zero_when_one_arm_is_better_by_construction():
    better = {s: ranks_of(0.8, s) for s in (0, 1)}  # every query ranked at least as well
    base = {s: ranks_of(1.0, s) for s in (0, 1)}
    delta = paired_bootstrap_rsum(better, base, n_resamples=1000, seed=0)
    assert 0 < delta.low <= delta.estimate <= delta.high and not delta.contains_zero


def test_bootstrap_interval_contains_zero_for_two_identical_arms():
    same = {0: ranks_of(1.0, 0)}
    assert paired_bootstrap_rsum(same, same) == Delta(0.0, 0.0, 0.0, (0,), 0.0)
    # Same distribution, independent queries' draws: noise only.
    twin = {0: ranks_of(1.0, 0, salt=7)}
    delta = paired_bootstrap_rsum(twin, same, n_resamples=1000, seed=0)
    assert delta.contains_zero and delta.low < 0 < delta.high


def test_bootstrap_estimate_is_the_difference_of_seed_averaged_rsums():
    arm = {s: ranks_of(0.7, s) for s in (0, 1, 2)}
    base = {s: ranks_of(1.0, s) for s in (0, 1, 2)}
    rsum = lambda runs: np.mean([metrics_from_ranks(r["i2t"], r["t2i"])["rsum"] for r in runs.values()])  # noqa: E731
    assert paired_bootstrap_rsum(arm, base).estimate == pytest.approx(rsum(arm) - rsum(base))


def test_bootstrap_matches_a_naive_resampling_that_recomputes_rsum_from_ranks():
    arm = {s: ranks_of(0.9, s) for s in (0, 1)}
    base = {s: ranks_of(1.0, s) for s in (0, 1)}
    rng = np.random.default_rng(123)
    naive = []
    for _ in range(1000):
        i = rng.integers(0, arm[0]["i2t"].size, arm[0]["i2t"].size)
        t = rng.integers(0, arm[0]["t2i"].size, arm[0]["t2i"].size)
        mean = lambda runs: np.mean([metrics_from_ranks(r["i2t"][i], r["t2i"][t])["rsum"] for r in runs.values()])  # noqa: E731
        naive.append(mean(arm) - mean(base))
    fast = paired_bootstrap_rsum(arm, base, n_resamples=4000, seed=0)
    low, high = np.quantile(naive, [0.025, 0.975])
    width = high - low
    assert fast.low == pytest.approx(low, abs=0.15 * width) and fast.high == pytest.approx(high, abs=0.15 * width)


def test_bootstrap_pairs_the_seeds_both_arms_have():
    arm = {0: ranks_of(0.8, 0), 1: ranks_of(0.8, 1)}
    base = {1: ranks_of(1.0, 1), 2: ranks_of(1.0, 2)}
    delta = paired_bootstrap_rsum(arm, base)
    assert delta.seeds == (1,)
    assert delta.estimate == pytest.approx(paired_bootstrap_rsum({1: arm[1]}, {1: base[1]}).estimate)


def test_bootstrap_refuses_runs_on_different_test_sets():
    short = {0: {"i2t": np.zeros(5, int), "t2i": np.zeros(10, int)}}
    with pytest.raises(ValueError, match="different test sets"):
        paired_bootstrap_rsum(short, {0: ranks_of(1.0, 0)})


def test_report_deltas_are_consistent_with_the_table_and_marked_when_not_significant(reports, report_store):  # noqa: F811
    report = reports[DEPTH_STUDY]
    rsum = report.cells[(report.cells["metric"] == "rsum") & (report.cells["source"] == "run")].set_index("arm")["mean"]
    # depth=2 has every seed of the baseline: its delta is the difference of the table's means.
    assert report.deltas["depth=2"].estimate == pytest.approx(rsum["depth=2"] - rsum["depth=0"])
    assert set(report.deltas) == {"depth=1", "depth=2", "depth=4"} and not any(d.contains_zero for d in report.deltas.values())
    # The same ranks for every run: every delta is 0 and flagged.
    stored = stored_studies(report_store.uri, [ESCAPE_STUDY])[0]
    frame = runs_frame(report_store.uri, [ESCAPE_STUDY])
    same = ranks_of(1.0, 0)
    flat = study_report(study_view(stored, frame), frame, {run: same for run in frame["run_id"].unique()})
    assert all(d.contains_zero for d in flat.deltas.values())
    assert to_latex(flat).count(r"$+0.0$ [$0.0$, $0.0$]\textsuperscript{ns}") == 3
    assert to_markdown(flat).count("+0.0 [0.0, 0.0]<sup>ns</sup>") == 3


# ---------------------------------------------------------------------------------- plots
def test_ablation_plot_on_a_numeric_axis_is_a_line_with_sd_error_bars(reports, report_store):  # noqa: F811
    fig = plot_ablation(reports[DEPTH_STUDY], "rsum")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "Decoder depth" and ax.get_ylabel() == "rSum (test)"
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1  # one series
    line, _, (segments,) = bars[0].lines
    assert line.get_xdata().tolist() == [DEPTH_VALUES[a] for a in DEPTH_ARMS]
    stats = [expected_stats(report_store, DEPTH_STUDY, arm, "rsum") for arm in DEPTH_ARMS]
    assert line.get_ydata().tolist() == pytest.approx([m for m, _, _ in stats])
    spans = [end for seg in segments.get_segments() for end in (seg[0][1], seg[1][1])]
    assert spans == pytest.approx([end for m, s, _ in stats for end in (m - s, m + s)])
    baseline = [l for l in ax.get_lines() if l.get_label().startswith("Baseline")]
    assert len(baseline) == 1 and baseline[0].get_ydata()[0] == pytest.approx(stats[0][0])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "4"]


def test_ablation_plot_on_categories_has_one_point_per_arm_and_readable_ticks(reports):
    fig = plot_ablation(reports[ESCAPE_STUDY], "rsum")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "Arm"
    assert [t.get_text() for t in ax.get_xticklabels()] == list(ESCAPE_LABELS)
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1 and len(bars[0].lines[0].get_xdata()) == len(ESCAPE_LABELS)
    assert not _overlap(fig, ax)


def test_long_category_labels_do_not_overlap(reports):
    report = reports[ESCAPE_STUDY]
    long = {arm: f"pre-train + align + distill, variant {arm}" for arm in report.view.arms}
    renamed = dataclasses.replace(
        report,
        view=dataclasses.replace(report.view, arms=tuple(long.values()), baseline=long[report.view.baseline]),
        values=report.values.assign(arm=report.values["arm"].map(long)),
    )
    fig = plot_ablation(renamed, "rsum")
    assert not _overlap(fig, fig.axes[0])


def test_training_curves_draw_one_line_with_an_sd_band_per_arm(reports):
    fig = plot_training_curves(reports[DEPTH_STUDY], "rsum")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "Epoch" and ax.get_ylabel() == "Validation rSum"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(DEPTH_ARMS)
    curves = [l for l in ax.get_lines() if len(l.get_xdata()) == EPOCHS]
    assert len(curves) == len(DEPTH_ARMS)
    assert len(ax.collections) == len(DEPTH_ARMS)  # the bands (every arm has >= 2 seeds)
    assert curves[0].get_xdata().tolist() == [1, 2, 3]  # epochs counted from 1


def test_human_names_of_config_keys():
    assert human_name("model.decoder.depth") == "Decoder depth"
    assert human_name("model.decoder.num_tokens") == "Decoder tokens"
    assert human_name("finetune.distill.metric") == "Distill metric"
    assert human_name("pretrain.epochs") == "Pre-training epochs"
    assert human_name("model.text.config_overrides.num_hidden_layers") == "Config overrides number of hidden layers"


def _overlap(fig, ax) -> bool:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = sorted((t.get_window_extent(renderer) for t in ax.get_xticklabels()), key=lambda b: b.x0)
    return any(a.x1 > b.x0 for a, b in zip(boxes, boxes[1:]))


# ------------------------------------------------------------------------ files and store
def test_build_report_writes_tables_and_figures_and_logs_them_on_the_parent(tmp_path):
    store = fill_store(tmp_path / "store")
    paths = build_report(store.uri, [DEPTH_STUDY], tmp_path / "out", latex=True, standalone=False)
    folder = tmp_path / "out" / DEPTH_STUDY
    assert [p.name for p in paths] == [
        "table.md", "table.csv", "table.tex", "ablation.png", "ablation.pdf", "curves.png", "curves.pdf",
    ]
    assert all(p.parent == folder and p.stat().st_size > 0 for p in paths)
    assert (folder / "ablation.png").read_bytes()[:4] == b"\x89PNG" and (folder / "curves.pdf").read_bytes()[:4] == b"%PDF"
    logged = MlflowClient(tracking_uri=store.uri).list_artifacts(store.parents[DEPTH_STUDY], names.ARTIFACT_FIGURES)
    assert sorted(Path(a.path).name for a in logged) == ["ablation.pdf", "ablation.png", "curves.pdf", "curves.png"]
    assert not (tmp_path / "out" / ESCAPE_STUDY).exists()


def test_without_latex_the_report_writes_no_paper_files(report_store, tmp_path):  # noqa: F811
    paths = build_report(report_store.uri, [DEPTH_STUDY], tmp_path, log_to_store=False)
    assert [p.name for p in paths] == ["table.md", "table.csv", "ablation.png", "curves.png"]


def test_a_report_of_every_study_written_by_worker_processes_is_the_one_written_in_one(tmp_path, monkeypatch):
    store = fill_store(tmp_path / "store")
    written = {}
    for cores in (2, 1):  # 2: one forked process per core writes each study; 1: this process writes them
        monkeypatch.setattr("harness.report._build.usable_cores", lambda: cores)
        out = tmp_path / f"cores{cores}"
        written[cores] = [p.relative_to(out) for p in build_report(store.uri, out_dir=out, latex=True)]
    assert written[2] == written[1] and {p.parts[0] for p in written[1]} == {DEPTH_STUDY, ESCAPE_STUDY}
    for table in (p for p in written[1] if p.suffix in (".md", ".csv", ".tex")):
        assert (tmp_path / "cores2" / table).read_text() == (tmp_path / "cores1" / table).read_text(), table
    logged = MlflowClient(tracking_uri=store.uri).list_artifacts(store.parents[ESCAPE_STUDY], names.ARTIFACT_FIGURES)
    assert sorted(Path(a.path).name for a in logged) == ["ablation.pdf", "ablation.png", "curves.pdf", "curves.png"]


def test_a_damaged_ranks_artifact_is_named_even_when_a_worker_process_read_it(tmp_path, monkeypatch):
    store = fill_store(tmp_path / "store")
    monkeypatch.setattr("harness.report._build.usable_cores", lambda: 2)
    (damaged,) = list((tmp_path / "store" / "mlartifacts" / ESCAPE_STUDY).rglob(names.ARTIFACT_RANKS))[:1]
    damaged.write_bytes(b"not a zip file")
    with pytest.raises(UserError, match=f"run {damaged.parent.parent.name}: ranks.npz is not a readable .npz file"):
        build_report(store.uri, out_dir=tmp_path / "out")


def test_build_report_refuses_an_unknown_metric(report_store, tmp_path):  # noqa: F811
    with pytest.raises(UserError, match="unknown metric 'rsumm'.*i2t_r1"):
        build_report(report_store.uri, out_dir=tmp_path, metric="rsumm")


def _view(arms: tuple[str, ...]):
    """A minimal study view for the pure table functions."""
    from harness.report import StudyView
    from harness.study import ReportSpec

    return StudyView(
        name="s", description="", parent_run_id="p", arms=arms, baseline=arms[0], seeds=(0,), arm_values={},
        vary=(), explicit_arms=True, reference={}, reference_source=None, spec=ReportSpec(),
    )


# ---------------------------------------------------------------------------------- power
def test_detectable_difference_shrinks_with_seeds_down_to_the_test_sets_own_noise():
    from scipy import stats

    from harness.report._power import detectable

    bounds = [detectable(n, seed_sd=4.0, test_se=1.0) for n in (2, 3, 5, 10, 100)]
    assert bounds == sorted(bounds, reverse=True)
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)  # 2.80
    assert detectable(1, None, 2.0) == pytest.approx(z * 2.0)  # one seed: the test noise only
    three = (stats.t.ppf(0.975, 2) + stats.t.ppf(0.8, 2)) * np.sqrt(16 / 3 + 1)
    assert detectable(3, 4.0, 1.0) == pytest.approx(three)
    assert detectable(1000, 4.0, 1.0) > z * 1.0  # seeds never remove the test set's noise


def test_seeds_for_a_target_are_the_fewest_whose_detectable_bound_meets_it():
    from harness.report._power import detectable, power

    line = power([1.0, 5.0, 3.0], test_se=0.5, target=4.0)
    assert line.n == 3 and line.seed_sd == pytest.approx(2.0)
    k = line.seeds_for_target
    assert detectable(k, 2.0, 0.5) <= 4.0 < detectable(k - 1, 2.0, 0.5)
    assert power([1.0, 5.0, 3.0], test_se=3.0, target=4.0).seeds_for_target is None  # the test noise alone is more
    assert power([2.0], test_se=1.0, target=4.0).seed_sd is None  # one seed: the seed noise is unknown


def test_the_standard_error_model_matches_the_spread_of_repeated_studies():
    """Simulated studies whose per-query differences are a shared query effect + seed x query flips
    + a seed shift: the power line's SE(k) = sqrt(A + sd^2 / k) must match the spread of the
    k-seed estimate over repeated studies (counting the query noise once, not twice)."""
    from harness.report._power import shared_query_se

    rng = np.random.default_rng(0)
    Q, k, repeats = 2000, 3, 400
    a = rng.normal(0.0, 60.0, Q)  # the test set is fixed: its query effects too
    estimates, predicted = [], []
    for _ in range(repeats):
        d = a[:, None] + rng.normal(0.0, 200.0, (Q, k)) + rng.normal(0.0, 1.0, k)  # (Q, k): flips dominate
        per_seed = d.mean(0)
        v1 = [np.var(d[:, s], ddof=1) / Q for s in range(k)]  # what the per-seed bootstrap measures
        vn = np.var(d.mean(1), ddof=1) / Q
        se_a = shared_query_se(vn, v1)
        predicted.append(np.sqrt(se_a**2 + np.var(per_seed, ddof=1) / k))
        estimates.append(per_seed.mean())
    # the test set's own effect is fixed over repeats: the truth adds its sampling spread back
    true_se = np.sqrt(np.var(estimates, ddof=1) + np.var(a, ddof=1) / Q)
    assert np.mean(predicted) == pytest.approx(true_se, rel=0.1)


def test_markdown_and_csv_state_each_comparisons_power_line(report_store):  # noqa: F811
    (report,) = load_reports(report_store.uri, [DEPTH_STUDY], detect=5.0)
    md = to_markdown(report)
    assert "**Power** (80% power, two-sided 5% level; `--detect 5`):" in md
    line = next(line for line in md.splitlines() if line.startswith("- depth=2 vs depth=0: Δ"))
    p = report.power["depth=2"]
    assert f"seed sd {p.seed_sd:.1f} over 3 seeds" in line and f"detectable at n = 3: {p.detectable:.1f}" in line
    assert "a difference of 5" in line
    table = pd.read_csv(io.StringIO(to_csv(report))).set_index("arm")
    assert table.at["depth=2", "rsum_detectable"] == pytest.approx(p.detectable)
    assert table.at["depth=2", "rsum_seed_sd"] == pytest.approx(p.seed_sd)
    values = report.values[(report.values["metric"] == "rsum")].set_index(["arm", "seed"])["value"]
    differences = [values[("depth=2", s)] - values[("depth=0", s)] for s in (0, 1, 2)]
    assert p.seed_sd == pytest.approx(np.std(differences, ddof=1))
