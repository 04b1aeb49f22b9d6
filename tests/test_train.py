"""The two-stage trainer: schedule, loss going down, resume == uninterrupted, seeding, selection."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.config import OptimConfig
from core.data import build_splits
from core.errors import UserError
from core.runtime import resolve_device
from core.stages import BEST_CHECKPOINT, LAST_CHECKPOINT
from core.train import NonFiniteLoss, lr_factor, train_stage
from harness.config import resolve

TINY = Path(__file__).parent / "data" / "tiny.yaml"


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return build_splits(resolve(TINY).data, tmp_path_factory.mktemp("data"))


def model_tensors(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(path)).items() if k.startswith(("model.", "loss."))}


def test_step_schedule_decays_at_the_configured_epochs():
    optim = OptimConfig(lr=1.0, decay_epochs=[2, 4], decay_factor=0.5)
    assert [lr_factor(optim, e, 6) for e in (0, 1.99, 2, 3.5, 4, 5)] == [1, 1, 0.5, 0.5, 0.25, 0.25]


def test_warmup_ramps_linearly_then_hands_over_to_the_schedule():
    optim = OptimConfig(schedule="cosine", warmup_epochs=1.0)
    assert lr_factor(optim, 0.0, 10) == 0.0
    assert lr_factor(optim, 0.5, 10) == pytest.approx(0.5 * lr_factor(OptimConfig(schedule="cosine"), 0.5, 10))
    assert lr_factor(optim, 10, 10) == pytest.approx(0.0)


def test_two_stage_run_lowers_the_loss_and_selects_on_validation(tmp_path, splits):
    config = resolve(TINY, ["pretrain.epochs=3", "finetune.epochs=3", "finetune.structure.enabled=true"])
    pre = train_stage(config, "pretrain", tmp_path / "pre", splits=splits)
    fine = train_stage(config, "finetune", tmp_path / "fine", init_from=tmp_path / "pre" / BEST_CHECKPOINT, splits=splits)
    for result in (pre, fine):
        losses = [epoch["train"]["loss"] for epoch in result.history]
        assert losses[-1] < losses[0]
        best = max(result.history, key=lambda r: r["val"]["rsum"])
        assert result.best_metrics["rsum"] == best["val"]["rsum"]
        assert not any(key.startswith("test/") for key in best)
    assert {"align_loss", "distill_loss", "structure_loss"} <= set(fine.history[0]["train"])
    assert not any(k.startswith("model.decoder.") for k in model_tensors(tmp_path / "pre" / BEST_CHECKPOINT))
    assert any(k.startswith("model.decoder.") for k in model_tensors(tmp_path / "fine" / BEST_CHECKPOINT))


def test_resume_from_a_middle_checkpoint_gives_identical_weights(tmp_path, splits):
    config = resolve(TINY, ["finetune.epochs=3", "pretrain.enabled=false"])
    train_stage(config, "finetune", tmp_path / "straight", splits=splits)

    class Interrupt(Exception):
        pass

    def stop_after_second_epoch(event):
        if event.kind == "epoch" and event.epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_stage(config, "finetune", tmp_path / "resumed", splits=splits, callback=stop_after_second_epoch)
    resumed = train_stage(config, "finetune", tmp_path / "resumed", splits=splits)
    assert len(resumed.history) == 3
    straight, again = model_tensors(tmp_path / "straight" / LAST_CHECKPOINT), model_tensors(tmp_path / "resumed" / LAST_CHECKPOINT)
    assert straight.keys() == again.keys()
    for key in straight:
        torch.testing.assert_close(again[key], straight[key], rtol=0, atol=0, msg=key)


def test_same_seed_gives_identical_weights_and_another_seed_does_not(tmp_path, splits):
    def weights(seed: int, name: str) -> dict[str, torch.Tensor]:
        config = resolve(TINY, ["pretrain.epochs=1", f"runtime.seed={seed}"])
        train_stage(config, "pretrain", tmp_path / name, splits=splits)
        return model_tensors(tmp_path / name / LAST_CHECKPOINT)

    first, second, other = weights(0, "a"), weights(0, "b"), weights(1, "c")
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_a_non_finite_loss_fails_the_stage_before_any_checkpoint_is_written(tmp_path, splits):
    config = resolve(TINY, {"pretrain.align.loss": "triplet", "pretrain.align.margin": float("nan")})
    with pytest.raises(NonFiniteLoss, match="pretrain: loss became non-finite in epoch 0"):
        train_stage(config, "pretrain", tmp_path, splits=splits)
    assert not (tmp_path / LAST_CHECKPOINT).exists() and not (tmp_path / BEST_CHECKPOINT).exists()


def test_device_names_resolve_or_fail_naming_the_option():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match=r"runtime.device='gpu0' is not a device"):
        resolve_device("gpu0")
    with pytest.raises(UserError, match=r"densify device='tpu'"):
        resolve_device("tpu", option="densify device")
