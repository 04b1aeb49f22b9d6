"""Study files: schema, error messages, arm expansion, per-arm config resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.errors import UserError
from harness.config import SETTINGS_DIR
from harness.plan import make_plan
from harness.study import Arm, Study, arm_config, expand_arms, load_study

# studies/sweep.yaml is the default sweep spec, not a study (tests/test_sweep.py loads it).
STUDIES = sorted(p for p in (Path(__file__).resolve().parents[1] / "studies").glob("*.yaml") if p.name != "sweep.yaml")


def write(tmp_path: Path, text: str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(UserError) as err:
        load_study(path)
    message = str(err.value)
    assert message.startswith(f"{path}: invalid study")
    return message


def labels(study: Study) -> list[str]:
    return [arm.label for arm in expand_arms(study)]


PAPER_SETTINGS = ("flickr30k-vit224", "flickr30k-swin224", "coco-vit224")


def _paper_data(tmp_path: Path) -> dict[str, str | None]:
    """Stand-ins for a paper-scale dataset's files (planning reads their sizes and times only),
    and weights that exist here (the local ViT/BERT weights of the paper settings do not)."""
    (tmp_path / "images").mkdir(exist_ok=True)
    for name in ("dataset.json", "dense.jsonl"):
        (tmp_path / name).write_text("{}")
    return {"data.annotations": str(tmp_path / "dataset.json"), "data.image_root": str(tmp_path / "images"),
            "data.dense_captions": str(tmp_path / "dense.jsonl"), "model.image.pretrained": None,
            "model.text.backbone": "all-MiniLM-L6-v2"}


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_every_study_file_plans_on_the_embedded_default_and_at_paper_scale(path: Path, tmp_path: Path) -> None:
    study = load_study(path)
    assert study.description.strip()
    if study.setting in PAPER_SETTINGS:  # a paper-scale study: its data is not on this machine
        with pytest.raises(UserError, match=r"data.annotations=datasets/.*: file not found"):
            make_plan(study)
    else:
        assert len(make_plan(study).runs) == len(expand_arms(study)) * len(study.seeds)
    for setting in PAPER_SETTINGS:
        paper = load_study(path, setting=setting)
        assert len(make_plan(paper, _paper_data(tmp_path)).runs) == len(expand_arms(paper)) * len(paper.seeds)
    with pytest.raises(UserError, match=r"data.annotations=datasets/.*: file not found"):
        make_plan(load_study(path, setting="flickr30k-vit224"))  # names the missing path and its key


def test_the_main_study_varies_decoder_depth_against_depth_zero() -> None:
    study = load_study(Path(__file__).resolve().parents[1] / "studies" / "decoder_depth.yaml")
    assert labels(study) == ["depth=0", "depth=1", "depth=2", "depth=4"]
    assert study.baseline == "depth=0" and study.setting == "cpu-small" and study.seeds == (0,)


def test_grid_labels_name_each_value_by_the_last_key_segment_in_the_order_written() -> None:
    study = Study(name="s", vary={"model.decoder.depth": [4, 0], "model.decoder.placement": ["surround", "prefix"]})
    assert labels(study) == [
        "depth=4, placement=surround",
        "depth=4, placement=prefix",
        "depth=0, placement=surround",
        "depth=0, placement=prefix",
    ]
    values = {"model.decoder.depth": 4, "model.decoder.placement": "prefix"}
    assert expand_arms(study)[1] == Arm("depth=4, placement=prefix", values)


def test_labels_use_more_segments_when_last_segments_collide() -> None:
    vary = {"model.image.pool": ["gpo"], "model.text.pool": ["mean"], "model.decoder.depth": [1]}
    study = Study(name="s", vary=vary)
    assert labels(study) == ["image.pool=gpo, text.pool=mean, depth=1"]


def test_label_values_other_than_strings_read_as_json() -> None:
    study = Study(name="s", vary={"finetune.distill.enabled": [True, False], "finetune.optim.lr": [0.0001]})
    assert labels(study) == ["enabled=true, lr=0.0001", "enabled=false, lr=0.0001"]


def test_explicit_arms_keep_their_labels_and_values() -> None:
    study = Study(name="s", arms=[{"label": "no pre-train", "set": {"pretrain.enabled": False}}, {"label": "all"}])
    assert expand_arms(study) == [Arm("no pre-train", {"pretrain.enabled": False}), Arm("all", {})]


def test_explicit_arms_are_crossed_with_the_grid() -> None:
    study = Study(
        name="s",
        arms=[{"label": "a", "set": {"pretrain.enabled": False}}, {"label": "b"}],
        vary={"model.decoder.depth": [1, 2]},
    )
    assert labels(study) == ["a, depth=1", "a, depth=2", "b, depth=1", "b, depth=2"]
    assert expand_arms(study)[1].values == {"pretrain.enabled": False, "model.decoder.depth": 2}


def test_study_without_vary_or_arms_has_one_default_arm() -> None:
    study = Study(name="s", base={"pretrain.epochs": 1})
    assert expand_arms(study) == [Arm("default", {})]
    assert study.baseline == "default"


def test_baseline_defaults_to_the_first_arm() -> None:
    assert Study(name="s", vary={"model.decoder.depth": [2, 4]}).baseline == "depth=2"


def test_unknown_top_level_key_names_the_file_and_the_closest_key(tmp_path: Path) -> None:
    message = load_error(tmp_path, "name: s\nvayr: {model.decoder.depth: [1]}\n")
    assert "vayr: unknown key; did you mean 'vary'?" in message


def test_unknown_nested_key_names_its_path_and_the_closest_key(tmp_path: Path) -> None:
    message = load_error(tmp_path, "name: s\narms: [{label: a}, {lable: b}]\nreport: {metrix: [rsum]}\n")
    assert "arms[1].lable: unknown key; did you mean 'label'?" in message
    assert "report.metrix: unknown key; did you mean 'metrics'?" in message


def test_wrong_type_names_the_key_and_the_value(tmp_path: Path) -> None:
    message = load_error(tmp_path, "name: s\nseeds: [0, one]\n")
    assert "seeds[1]:" in message and "'one'" in message


def test_duplicate_arm_labels_are_an_error(tmp_path: Path) -> None:
    message = load_error(tmp_path, "name: s\narms: [{label: a}, {label: a, set: {pretrain.epochs: 1}}]\n")
    assert "arm labels repeat: ['a']" in message


def test_empty_grid_is_an_error(tmp_path: Path) -> None:
    message = load_error(tmp_path, "name: s\nvary: {model.decoder.depth: []}\n")
    assert "vary: 'model.decoder.depth' has no values" in message


def test_unknown_setting_is_an_error_with_the_closest_name(tmp_path: Path) -> None:
    message = load_error(tmp_path, "name: s\nsetting: cpu-smal\n")
    assert "setting: unknown setting 'cpu-smal' (did you mean 'cpu-small'?)" in message


def test_baseline_that_is_not_an_arm_is_an_error(tmp_path: Path) -> None:
    message = load_error(tmp_path, "name: s\nvary: {model.decoder.depth: [1, 2]}\nbaseline: depth=3\n")
    assert "baseline: 'depth=3' is not an arm (did you mean 'depth=2'?); arms: depth=1, depth=2" in message


def test_reference_must_name_arms_and_metrics_and_its_source() -> None:
    vary = {"model.decoder.depth": [1]}
    with pytest.raises(ValidationError, match="reference.depth=2: 'depth=2' is not an arm"):
        Study(name="s", vary=vary, reference={"depth=2": {"rsum": 1.0}}, reference_source="paper")
    with pytest.raises(ValidationError, match="Input should be 'i2t_r1'"):
        Study(name="s", vary=vary, reference={"depth=1": {"rsumm": 1.0}}, reference_source="paper")
    with pytest.raises(ValidationError, match="reference_source: say where"):
        Study(name="s", vary=vary, reference={"depth=1": {"rsum": 1.0}})


@pytest.mark.parametrize(
    "fields",
    [
        {"base": {"runtime.seed": 1}},
        {"base": {"runtime": {"seed": 1}}},
        {"vary": {"runtime.seed": [1, 2]}},
        {"arms": [{"label": "a", "set": {"runtime.seed": 1}}]},
    ],
    ids=["base", "base-nested", "vary", "arm"],
)
def test_seed_is_set_only_by_seeds(fields: dict) -> None:
    with pytest.raises(ValidationError, match="runtime.seed; list the seeds under `seeds`"):
        Study(name="s", **fields)


def test_repeated_or_missing_seeds_are_errors() -> None:
    with pytest.raises(ValidationError, match=r"seeds repeat: \[1\]"):
        Study(name="s", seeds=[1, 2, 1])
    with pytest.raises(ValidationError, match="at least one seed"):
        Study(name="s", seeds=[])


def test_arm_setting_a_varied_key_is_an_error() -> None:
    with pytest.raises(ValidationError, match=r"sets \['model.decoder.depth'\], which `vary` also varies"):
        Study(name="s", arms=[{"label": "a", "set": {"model.decoder.depth": 1}}], vary={"model.decoder.depth": [2]})


def test_line_plot_needs_a_varied_key_on_x() -> None:
    vary = {"model.decoder.depth": [1, 2]}
    line = Study(name="s", vary=vary, report={"plot": "line", "x": "model.decoder.depth"})
    assert line.report.x == "model.decoder.depth"
    with pytest.raises(ValidationError, match="plot 'line' needs x = one of the vary keys"):
        Study(name="s", vary=vary, report={"plot": "line"})
    with pytest.raises(ValidationError, match="only used by plot 'line'"):
        Study(name="s", vary=vary, report={"x": "model.decoder.depth"})


def test_study_name_must_be_usable_as_an_experiment_name() -> None:
    with pytest.raises(ValidationError, match="use letters, digits"):
        Study(name="my study")


def test_study_is_frozen() -> None:
    study = Study(name="s")
    with pytest.raises(ValidationError):
        study.seeds = (1,)


def test_relative_setting_path_is_read_relative_to_the_study_file(tmp_path: Path) -> None:
    (tmp_path / "settings").mkdir()
    tiny = f"extends: {SETTINGS_DIR / 'cpu-small.yaml'}\npretrain: {{epochs: 1}}\n"
    (tmp_path / "settings" / "tiny.yaml").write_text(tiny)
    study = load_study(write(tmp_path, "name: s\nsetting: settings/tiny.yaml\n"))
    assert arm_config(study, expand_arms(study)[0]).pretrain.epochs == 1


def test_study_that_is_not_a_mapping_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="a study must be a mapping"):
        load_study(write(tmp_path, "- name: s\n"))


def test_arm_config_layers_setting_base_arm_seed_then_set() -> None:
    study = Study(
        name="s",
        base={"pretrain.epochs": 1, "finetune.epochs": 1},
        arms=[{"label": "a", "set": {"finetune.epochs": 2, "model.decoder.depth": 3}}],
    )
    config = arm_config(study, expand_arms(study)[0], ["model.decoder.depth=5"], seed=7)
    assert config.pretrain.epochs == 1  # base
    assert config.finetune.epochs == 2  # the arm over base
    assert config.model.decoder.depth == 5  # --set over the arm
    assert config.runtime.seed == 7
    assert config.model.embed_dim == 128  # from the cpu-small setting


def test_bad_value_in_an_arm_names_the_arm(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, "name: s\nvary: {model.decoder.depth: [1, -1]}\n"))
    with pytest.raises(UserError, match=r"model.decoder.depth: got -1;.*\(from arm 'depth=-1'\)"):
        arm_config(study, expand_arms(study)[1])


def test_config_key_typo_in_base_names_the_study_file_and_the_closest_key(tmp_path: Path) -> None:
    path = write(tmp_path, "name: s\nbase: {model.decoder.dept: 1}\n")
    study = load_study(path)
    with pytest.raises(UserError, match=rf"from study {path} base.*did you mean 'model.decoder.depth'"):
        arm_config(study, expand_arms(study)[0])


def test_setting_the_seed_from_the_command_line_is_refused() -> None:
    study = Study(name="s")
    with pytest.raises(UserError, match="--set runtime.seed: the study's `seeds` set the seed"):
        arm_config(study, expand_arms(study)[0], ["runtime.seed=3"])
