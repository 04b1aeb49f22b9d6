"""The frozen teachers of a training stage.

- ``own``: a frozen copy of the model as the stage received it (after pre-training: the
  pre-trained image encoder and the dense-caption text encoder). It is the teacher of
  dense-to-sparse distillation, and the default unimodal teacher of structure-aware distillation.
- ``image`` / ``text``: dedicated frozen unimodal backbones named by ``structure.image_teacher`` /
  ``structure.text_teacher`` (RVLR distils from the best unimodal models, not from the student).
  An image teacher is a timm model whose pooled pre-logit features are its embedding; a text
  teacher is a Hugging Face encoder whose embedding is the mean of its token features over the
  caption (sentence-transformers' pooling, the one all-MiniLM-L6-v2 was trained with). Each reads
  the raw input with its own normalisation and tokenizer, so its width need not match the model's:
  relations are compared, not coordinates.

Each teacher's text is the one the own teacher reads: the dense caption when the batch has one,
else the batch's own caption.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from core.config import ImageEncoderConfig, StageConfig, TextEncoderConfig
from core.model import D2SVSE, PixelNormalize, create_image_backbone, create_text_backbone

__all__ = ["ImageTeacher", "TextTeacher", "Teachers", "build_teachers"]


class ImageTeacher(nn.Module):
    """A frozen timm backbone: uint8 images -> pooled features ``(B, C)``."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.normalize = PixelNormalize(backbone)

    def forward(self, images: Tensor) -> Tensor:
        return self.backbone(self.normalize(images))  # num_classes=0: the pre-logit features


class TextTeacher(nn.Module):
    """A frozen Hugging Face encoder: strings -> masked mean of its token features ``(B, H)``."""

    def __init__(self, backbone: nn.Module, tokenizer: Any, max_length: int):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.max_length = max_length

    def forward(self, texts: Sequence[str]) -> Tensor:
        device = next(self.backbone.parameters()).device
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        mask = tokens["attention_mask"].to(device)
        hidden = self.backbone(input_ids=tokens["input_ids"].to(device), attention_mask=mask).last_hidden_state
        m = mask[..., None].to(hidden.dtype)  # (B, L, 1)
        return (hidden * m).sum(dim=1) / m.sum(dim=1)


class Teachers(nn.Module):
    """The stage's frozen teachers; :meth:`forward` embeds a batch with each of them, computing
    only what the stage's losses read (an image forward costs as much as the student's)."""

    def __init__(
        self, own: D2SVSE | None, image: ImageTeacher | None, text: TextTeacher | None, own_image: bool = False
    ):
        super().__init__()
        self.own, self.image, self.text = own, image, text
        self.own_image = own_image  # the own copy is the structure loss's image teacher
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> Teachers:
        return super().train(False)  # frozen: dropout and norms stay in eval mode

    @torch.no_grad()
    def forward(self, batch: dict[str, Any], images: Tensor) -> dict[str, Tensor]:
        """``{"dense"?, "image_teacher"?, "text_teacher"?}`` for the batch, float32.

        Args:
            batch: the collated batch (tokens and ``strings``).
            images: its images, on the teachers' device.
        """
        out: dict[str, Tensor] = {}
        teacher_tokens = batch["dense"] if "dense" in batch else batch["text"]
        if self.own is not None:
            out["dense"] = self.own.embed_texts(teacher_tokens, decoder=False).float()
            out["text_teacher"] = out["dense"]
        if self.own_image:
            out["image_teacher"] = self.own.embed_images(images).float()
        if self.image is not None:
            out["image_teacher"] = self.image(images).float()
        if self.text is not None:
            strings = batch["strings"]
            out["text_teacher"] = self.text(strings.get("dense", strings["text"])).float()
        return out


def build_teachers(model: D2SVSE, section: StageConfig) -> Teachers | None:
    """The teachers a stage needs, or None: the own copy when dense-to-sparse distillation is on,
    or structure-aware distillation lacks a named teacher for either modality.

    Args:
        model: the stage's model as it starts (copied, not shared).
        section: the stage's config (``distill``, ``structure``).
    """
    distill = getattr(section, "distill", None)
    distill_on = distill is not None and distill.enabled
    structure = section.structure if section.structure.enabled else None
    if not distill_on and structure is None:
        return None
    image = text = None
    if structure is not None and structure.image_teacher is not None:
        cfg = ImageEncoderConfig(backbone=structure.image_teacher, pretrained=structure.image_teacher_weights)
        options = ("structure.image_teacher", "structure.image_teacher_weights")
        image = ImageTeacher(create_image_backbone(cfg, options))
    if structure is not None and structure.text_teacher is not None:
        backbone, tokenizer = create_text_backbone(TextEncoderConfig(backbone=structure.text_teacher), "structure.text_teacher")
        text = TextTeacher(backbone, tokenizer, model.config.text.dense_max_length)
    own_image = structure is not None and image is None
    needs_own = distill_on or own_image or text is None
    own = copy.deepcopy(model) if needs_own else None
    return Teachers(own, image, text, own_image).to(model.device)
