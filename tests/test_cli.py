"""The CLI layer: option precedence, what each command asks of the layer below, clean errors."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

import harness.report
import harness.ui
from harness.cli import app

runner = CliRunner()


def test_report_defaults_to_the_store_in_the_workdir(tmp_path, monkeypatch):
    calls = []
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(harness.report, "build_report", lambda *a, **k: calls.append((a, k)) or [])
    result = runner.invoke(app, ["report", "s1", "--latex", "--workdir", str(tmp_path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    (args, kwargs), = calls
    assert args[0] == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert args[1] == ["s1"] and kwargs["latex"] is True and kwargs["standalone"] is False


def test_tracking_uri_option_beats_the_environment_which_beats_the_default(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(harness.ui, "serve_ui", lambda uri, **kw: seen.append((uri, kw["port"])))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    assert runner.invoke(app, ["ui", "--port", "5123"]).exit_code == 0
    assert runner.invoke(app, ["ui", "--tracking-uri", "sqlite:///given.db"]).exit_code == 0
    assert seen == [("sqlite:///from-env.db", 5123), ("sqlite:///given.db", 5000)]


def test_harness_home_sets_the_default_workdir(tmp_path, monkeypatch):
    seen = []
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HARNESS_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(harness.ui, "serve_ui", lambda uri, **kw: seen.append(uri))
    assert runner.invoke(app, ["ui"]).exit_code == 0
    assert seen == [f"sqlite:///{(tmp_path / 'home').resolve()}/mlflow.db"]


def test_user_errors_print_one_line_without_traceback_and_exit_1(tmp_path):
    result = runner.invoke(app, ["run", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 1
    assert "missing.yaml" in result.output and "Traceback" not in result.output


def test_bad_set_option_names_the_key(tmp_path):
    result = runner.invoke(app, ["prepare", "--set", "data.sorce=laps", "--workdir", str(tmp_path)])
    assert result.exit_code == 1
    assert "did you mean 'data.source'" in " ".join(result.output.split())  # rich wraps lines


def test_prepare_writes_the_image_cache(tmp_path):
    tiny = Path(__file__).parent / "data" / "tiny.yaml"
    result = runner.invoke(app, ["prepare", "--setting", str(tiny), "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert {p.parent.name for p in (tmp_path / "data").glob("*/*/images.u8")} == {"train", "val", "test"}


def test_unknown_benchmark_lists_the_known_ones(tmp_path):
    result = runner.invoke(app, ["bench", "speedy", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "retrieval" in result.output and "overhead" in result.output


def test_densify_without_a_local_model_says_what_to_pass(tmp_path):
    result = runner.invoke(
        app, ["densify", "--model", "llava-hf/llava-1.5-13b-hf", "--out", str(tmp_path / "d.jsonl"), "--workdir", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "llava-hf/llava-1.5-13b-hf" in result.output and "Traceback" not in result.output


def test_seeds_option_replaces_the_studys_seeds_in_the_plan(tmp_path):
    study = Path(__file__).parents[1] / "studies" / "decoder_depth.yaml"
    result = runner.invoke(app, ["run", str(study), "--dry-run", "--seeds", "0,1,2", "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "12 (arm, seed) runs, 3 pre-trainings" in result.output


def test_bad_seeds_option_is_a_one_line_error(tmp_path):
    study = Path(__file__).parents[1] / "studies" / "decoder_depth.yaml"
    for bad, message in (("0,x", "comma-separated integers"), ("1,1", "seeds repeat")):
        result = runner.invoke(app, ["run", str(study), "--dry-run", "--seeds", bad, "--workdir", str(tmp_path)])
        assert result.exit_code == 1 and message in " ".join(result.output.split()), result.output


def test_setting_option_plans_a_study_at_paper_scale_and_names_the_missing_data(tmp_path):
    study = Path(__file__).parents[1] / "studies" / "placement.yaml"
    args = ["run", str(study), "--dry-run", "--setting", "flickr30k-vit224", "--workdir", str(tmp_path)]
    missing = runner.invoke(app, args)
    assert missing.exit_code == 1
    assert "data.annotations=datasets/flickr30k/dataset_flickr30k.json: file not found" in " ".join(missing.output.split())
    (tmp_path / "images").mkdir()
    for name in ("ann.json", "dense.jsonl"):
        (tmp_path / name).write_text("{}")
    paths = [f"data.annotations={tmp_path / 'ann.json'}", f"data.image_root={tmp_path / 'images'}",
             f"data.dense_captions={tmp_path / 'dense.jsonl'}", "model.image.pretrained=null",
             "model.text.backbone=all-MiniLM-L6-v2"]  # weights that exist here
    planned = runner.invoke(app, [*args, *(x for p in paths for x in ("--set", p))])
    assert planned.exit_code == 0, planned.output
    assert "3 (arm, seed) runs, 1 pre-trainings" in planned.output
