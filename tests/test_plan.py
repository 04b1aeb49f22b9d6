"""Planning: stage chains, content hashes, sharing, stage switches, status on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import UserError
from core.stages import LAST_CHECKPOINT, STAGES
from harness.config import flatten, resolve
from harness.plan import (
    DONE,
    NEUTRAL_FIELDS,
    hashed_fields,
    make_plan,
    mark_done,
    stage_dir,
    stage_hash,
    stage_status,
)
from harness.study import Study

ROOT = Path(__file__).resolve().parents[1]


def kinds(plan) -> list[str]:
    return [stage.kind for stage in plan.stages.values()]


def chain_kinds(plan, run) -> list[str]:
    return [plan.stages[digest].kind for digest in run.chain]


def hashes(overrides: dict) -> dict[str, str]:
    """Each stage kind's hash for the cpu-small setting with ``overrides``."""
    plan = make_plan(Study(name="s"), overrides)
    (run,) = plan.runs
    return {plan.stages[d].kind: d for d in run.chain}


def test_decoder_depth_study_runs_one_pretraining_per_seed() -> None:
    plan = make_plan(Study(name="s", vary={"model.decoder.depth": [0, 1, 2, 4, 6]}, seeds=[0, 1, 2]))
    assert len(plan.runs) == 15
    assert kinds(plan).count("pretrain") == 3
    assert kinds(plan).count("finetune") == 15
    assert kinds(plan).count("eval") == 15
    for stage in plan.stages.values():
        if stage.kind == "pretrain":
            seed = stage.config.runtime.seed
            assert stage.users == tuple((f"depth={d}", seed) for d in (0, 1, 2, 4, 6))


@pytest.mark.parametrize(
    "vary",
    [
        {"model.decoder.placement": ["prefix", "postfix", "surround"]},
        {"finetune.distill.metric": ["cosine", "l2", "l1", "kl"]},
    ],
    ids=["placement", "distill-metric"],
)
def test_ablations_of_finetuning_share_pretraining(vary: dict) -> None:
    plan = make_plan(Study(name="s", vary=vary, seeds=[0, 1]))
    assert kinds(plan).count("pretrain") == 2
    assert kinds(plan).count("finetune") == len(plan.runs) == 2 * len(next(iter(vary.values())))


def test_pretrain_epochs_change_pretrain_finetune_and_eval_hashes() -> None:
    before, after = hashes({}), hashes({"pretrain.epochs": 1})
    assert all(before[kind] != after[kind] for kind in ("pretrain", "finetune", "eval"))


def test_decoder_depth_changes_finetune_but_not_pretrain() -> None:
    before, after = hashes({"model.decoder.depth": 1}), hashes({"model.decoder.depth": 4})
    assert before["pretrain"] == after["pretrain"]
    assert before["finetune"] != after["finetune"] and before["eval"] != after["eval"]


def test_finetune_settings_change_finetune_but_not_pretrain() -> None:
    before, after = hashes({}), hashes({"finetune.epochs": 1})
    assert before["pretrain"] == after["pretrain"] and before["finetune"] != after["finetune"]


def test_test_fold_size_changes_only_the_evaluation() -> None:
    before, after = hashes({}), hashes({"eval.fold_size": 100})
    assert before["finetune"] == after["finetune"] and before["eval"] != after["eval"]


@pytest.mark.parametrize(
    "key, value",
    [
        ("runtime.device", "cpu"),
        ("runtime.log_every_steps", 3),
        ("runtime.fused_adamw", False),
        ("data.num_workers", 2),
        ("eval.batch_size", 7),
    ],
)
def test_result_neutral_fields_change_no_hash(key: str, value) -> None:
    assert key in NEUTRAL_FIELDS
    assert hashes({key: value}) == hashes({})


def test_seed_changes_every_stage() -> None:
    plan = make_plan(Study(name="s", seeds=[0, 1]))
    assert set(plan.runs[0].chain).isdisjoint(plan.runs[1].chain)


def test_every_config_field_is_hashed_by_a_stage_or_declared_neutral() -> None:
    config = resolve()
    hashed = set().union(*(hashed_fields(config, kind) for kind in STAGES))
    assert set(flatten(config)) - hashed == NEUTRAL_FIELDS


def test_pretrain_hashes_no_decoder_or_finetune_field() -> None:
    fields = hashed_fields(resolve(), "pretrain")
    assert fields and not [k for k in fields if k.startswith(("model.decoder.", "finetune."))]
    assert "model.image.backbone" in fields and "pretrain.epochs" in fields


def test_stage_hash_covers_its_parent_and_the_data_fingerprint() -> None:
    config = resolve()
    assert stage_hash(config, "finetune", None, "d") != stage_hash(config, "finetune", "0" * 16, "d")
    assert stage_hash(config, "finetune", None, "d") != stage_hash(config, "finetune", None, "e")


def test_disabled_pretrain_leaves_finetune_without_parent() -> None:
    plan = make_plan(Study(name="s"), {"pretrain.enabled": False})
    (run,) = plan.runs
    assert chain_kinds(plan, run) == ["finetune", "eval"]
    assert plan.stages[run.chain[0]].parent is None
    assert plan.stages[run.chain[1]].parent == run.chain[0]


def test_disabled_finetune_evaluates_the_pretrained_checkpoint() -> None:
    plan = make_plan(Study(name="s"), {"finetune.enabled": False})
    (run,) = plan.runs
    assert chain_kinds(plan, run) == ["pretrain", "eval"]
    assert plan.stages[run.chain[1]].parent == run.chain[0]
    assert run.config_hash == run.chain[-1]


def test_stage_ablation_shares_pretraining_between_its_pretrained_arms() -> None:
    arms = [
        {"label": "pre-train only", "set": {"finetune.enabled": False}},
        {"label": "align only", "set": {"pretrain.enabled": False, "finetune.distill.enabled": False}},
        {"label": "all three"},
    ]
    plan = make_plan(Study(name="s", arms=arms))
    (pretrain,) = [s for s in plan.stages.values() if s.kind == "pretrain"]
    assert pretrain.users == (("pre-train only", 0), ("all three", 0))
    assert [chain_kinds(plan, run) for run in plan.runs] == [
        ["pretrain", "eval"],
        ["finetune", "eval"],
        ["pretrain", "finetune", "eval"],
    ]


def test_both_stages_disabled_is_an_error_naming_the_arm() -> None:
    study = Study(name="s", arms=[{"label": "nothing", "set": {"pretrain.enabled": False, "finetune.enabled": False}}])
    with pytest.raises(UserError, match="arm 'nothing': pretrain.enabled and finetune.enabled are both false"):
        make_plan(study)


def test_bad_value_fails_planning_naming_the_arm() -> None:
    study = Study(name="s", vary={"model.decoder.placement": ["surround", "middle"]})
    with pytest.raises(UserError, match=r"model.decoder.placement: got 'middle'.*\(from arm 'placement=middle'\)"):
        make_plan(study)


def test_overrides_apply_to_every_arm() -> None:
    plan = make_plan(Study(name="s", vary={"model.decoder.depth": [1, 2]}), ["finetune.epochs=1"])
    assert {run.config.finetune.epochs for run in plan.runs} == {1}


def test_stages_are_listed_parents_first_and_runs_seed_major() -> None:
    plan = make_plan(Study(name="s", vary={"model.decoder.depth": [1, 2]}, seeds=[3, 5]))
    order = list(plan.stages)
    for stage in plan.stages.values():
        assert stage.parent is None or order.index(stage.parent) < order.index(stage.hash)
    runs = [(run.arm.label, run.seed) for run in plan.runs]
    assert runs == [("depth=1", 3), ("depth=2", 3), ("depth=1", 5), ("depth=2", 5)]
    assert all(run.config.runtime.seed == run.seed for run in plan.runs)


def test_plan_is_deterministic_across_calls_and_processes() -> None:
    study = Study(name="s", vary={"model.decoder.depth": [0, 4]}, seeds=[0, 1])
    expected = [list(run.chain) for run in make_plan(study).runs]
    assert [list(run.chain) for run in make_plan(study).runs] == expected
    code = (
        "import json; from harness.plan import make_plan; from harness.study import Study; "
        "study = Study(name='s', vary={'model.decoder.depth': [0, 4]}, seeds=[0, 1]); "
        "print(json.dumps([list(r.chain) for r in make_plan(study).runs]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # a different str-hash order than this process
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=ROOT)
    assert json.loads(out.stdout) == expected


def test_stage_status_reads_done_partial_and_todo(tmp_path: Path) -> None:
    plan = make_plan(Study(name="s"))
    pretrain, finetune, evaluation = plan.runs[0].chain
    (stage_dir(tmp_path, finetune)).mkdir(parents=True)
    (stage_dir(tmp_path, finetune) / LAST_CHECKPOINT).write_bytes(b"")
    stage_dir(tmp_path, evaluation).mkdir(parents=True)  # an empty folder is not progress
    mark_done(tmp_path, pretrain)
    assert stage_dir(tmp_path, pretrain) == tmp_path / "stages" / pretrain
    assert (stage_dir(tmp_path, pretrain) / DONE).is_file()
    assert stage_status(plan, tmp_path) == {pretrain: "done", finetune: "partial", evaluation: "todo"}


# ------------------------------------------------------------------- what the config only names
def _karpathy_study(tmp_path: Path) -> Path:
    """A study on a 3-image Karpathy dataset with a dense-caption file (nothing decoded)."""
    images = [
        {"filename": f"{n}.png", "split": split, "sentences": [{"raw": f"caption of {n}"}], "imgid": n}
        for n, split in enumerate(["train", "val", "test"])
    ]
    (tmp_path / "images").mkdir()
    (tmp_path / "ann.json").write_text(json.dumps({"images": images}))
    (tmp_path / "dense.jsonl").write_text("".join(json.dumps({"image": f"{n}.png", "text": "old"}) + "\n" for n in range(3)))
    study = tmp_path / "study.yaml"
    study.write_text(
        "name: real\nsetting: cpu-small\nbase:\n"
        f"  data.source: karpathy\n  data.annotations: {tmp_path / 'ann.json'}\n"
        f"  data.image_root: {tmp_path / 'images'}\n  data.dense_captions: {tmp_path / 'dense.jsonl'}\n"
    )
    return study


def test_rewriting_the_dense_captions_at_the_same_path_makes_the_pretraining_to_run(tmp_path) -> None:
    from typer.testing import CliRunner

    from harness.cli import app
    from harness.study import load_study

    study = _karpathy_study(tmp_path)
    workdir = tmp_path / "work"
    for digest in make_plan(load_study(study)).stages:
        mark_done(workdir, digest)
    dry_run = ["run", str(study), "--dry-run", "--workdir", str(workdir)]
    before = CliRunner().invoke(app, dry_run)
    assert before.exit_code == 0, before.output
    assert "to run" not in before.output and "cached" in before.output
    dense = tmp_path / "dense.jsonl"
    dense.write_text(dense.read_text().replace('"old"', '"new and longer"'))
    after = CliRunner().invoke(app, dry_run)
    assert after.exit_code == 0, after.output
    assert "cached" not in after.output and "to run" in after.output


def test_a_missing_annotation_file_fails_planning_naming_the_key(tmp_path) -> None:
    with pytest.raises(UserError, match=r"arm .*data.annotations=/no/such.json: file not found"):
        make_plan(Study(name="s"), {"data.source": "karpathy", "data.annotations": "/no/such.json"})


def test_auto_precision_is_hashed_as_what_it_resolves_to_on_this_machine() -> None:
    import torch

    resolved = "bf16" if torch.cuda.is_available() else "fp32"
    auto = make_plan(Study(name="s"), {"runtime.precision": "auto"})
    explicit = make_plan(Study(name="s"), {"runtime.precision": resolved})
    other = make_plan(Study(name="s"), {"runtime.precision": "fp16"})
    assert auto.runs[0].chain == explicit.runs[0].chain != other.runs[0].chain
    assert auto.runs[0].config.runtime.precision == resolved  # what runs is what was hashed


def test_eval_batch_size_is_hashed_only_where_unmasked_decoder_padding_makes_results_depend_on_it() -> None:
    masked = hashes({"eval.batch_size": 64}), hashes({"eval.batch_size": 128})
    assert masked[0] == masked[1]  # padding masked: the batch changes nothing
    unmasked = hashes({"eval.batch_size": 64, "model.decoder.mask_padding": False})
    other = hashes({"eval.batch_size": 128, "model.decoder.mask_padding": False})
    assert unmasked["pretrain"] == other["pretrain"]  # pre-training embeds dense text without the decoder
    assert unmasked["finetune"] != other["finetune"] and unmasked["eval"] != other["eval"]


def test_auto_precision_is_resolved_for_the_device_the_workers_run_on() -> None:
    on_cpu = make_plan(Study(name="s"), {"runtime.precision": "auto", "runtime.device": "auto"}, device="cpu")
    assert on_cpu.runs[0].config.runtime.precision == "fp32"
    with pytest.raises(UserError, match="mixes device types"):
        from harness.execute import plan_study

        plan_study(Path(__file__).parents[1] / "studies" / "decoder_depth.yaml", devices=("cpu", "cuda:0"))
