"""The frozen teachers: the model's own copy, and dedicated unimodal backbones named in the config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from core.data import Collator, PairDataset, build_splits
from core.errors import UserError
from core.model import TEXT_BACKBONE_ALIASES, build_model
from core.teachers import build_teachers
from core.stages import BEST_CHECKPOINT
from core.train import train_stage
from harness.config import resolve

TINY = Path(__file__).parent / "data" / "tiny.yaml"
NAMED = ["finetune.structure.enabled=true", "finetune.structure.image_teacher=test_resnet",
         "finetune.structure.text_teacher=all-MiniLM-L6-v2"]


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    return build_splits(resolve(TINY).data, tmp_path_factory.mktemp("data"))


def _batch(config, splits, model, n: int = 4) -> dict:
    dataset = PairDataset(splits["train"], config.data, text="sparse", train=True)
    collate = Collator(model.tokenizer, config.model.text.max_length, None, config.model.text.dense_max_length)
    return collate([dataset[i] for i in range(n)])


def test_no_distillation_needs_no_teacher():
    config = resolve(TINY, ["finetune.distill.enabled=false"])
    assert build_teachers(build_model(config), config.finetune) is None


def test_named_teachers_embed_with_their_own_inputs_and_leave_no_own_copy(splits):
    config = resolve(TINY, [*NAMED, "finetune.distill.enabled=false"])
    model = build_model(config)
    teachers = build_teachers(model, config.finetune)
    assert teachers.own is None
    assert not any(p.requires_grad for p in teachers.parameters())
    batch = _batch(config, splits, model)
    out = teachers(batch, batch["image"])
    assert set(out) == {"image_teacher", "text_teacher"}
    assert out["image_teacher"].shape == (4, teachers.image.backbone.num_features)
    # the text teacher reads the raw dense captions with its own tokenizer and mean-pools them,
    # as all-MiniLM-L6-v2 was trained
    folder = TEXT_BACKBONE_ALIASES["all-MiniLM-L6-v2"]()
    tokenizer, encoder = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    tokens = tokenizer(batch["strings"]["dense"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**tokens).last_hidden_state
    mask = tokens["attention_mask"][..., None].float()
    torch.testing.assert_close(out["text_teacher"], (hidden * mask).sum(1) / mask.sum(1), atol=1e-5, rtol=1e-4)


def test_dense_distillation_keeps_the_own_copy_beside_named_structure_teachers(splits):
    config = resolve(TINY, NAMED)
    model = build_model(config)
    teachers = build_teachers(model, config.finetune)
    batch = _batch(config, splits, model)
    out = teachers(batch, batch["image"])
    with torch.no_grad():
        own_dense = model.eval().embed_texts(batch["dense"], decoder=False)
    torch.testing.assert_close(out["dense"], own_dense)  # distillation still reads the own teacher
    assert out["text_teacher"].shape[1] == 384  # structure reads MiniLM


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("image_teacher", "resnet_nope", "structure.image_teacher: unknown timm model 'resnet_nope'"),
        ("text_teacher", "/no/such/encoder", "structure.text_teacher '/no/such/encoder' cannot be loaded offline"),
    ],
)
def test_an_unknown_teacher_is_a_user_error_naming_its_key(key, value, message):
    config = resolve(TINY, ["finetune.structure.enabled=true", f"finetune.structure.{key}={value}"])
    with pytest.raises(UserError, match=message):
        build_teachers(build_model(config), config.finetune)


def test_finetuning_with_named_structure_teachers_trains(tmp_path, splits):
    config = resolve(TINY, [*NAMED, "pretrain.epochs=1", "finetune.epochs=1"])
    train_stage(config, "pretrain", tmp_path / "pre", splits=splits)
    result = train_stage(config, "finetune", tmp_path / "fine", init_from=tmp_path / "pre" / BEST_CHECKPOINT, splits=splits)
    record = result.history[0]["train"]
    assert record["structure_loss"] > 0 and record["distill_loss"] > 0
    assert torch.isfinite(torch.tensor(record["loss"]))


def test_teachers_embed_only_what_the_losses_read(splits):
    """Dense distillation alone reads the dense embedding: no image forward through the teacher."""
    config = resolve(TINY)
    model = build_model(config)
    batch = _batch(config, splits, model)
    assert set(build_teachers(model, config.finetune)(batch, batch["image"])) == {"dense", "text_teacher"}
    structure = resolve(TINY, ["finetune.structure.enabled=true"])
    out = build_teachers(model, structure.finetune)(batch, batch["image"])
    assert set(out) == {"dense", "text_teacher", "image_teacher"}
