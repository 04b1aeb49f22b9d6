"""The pipeline's stages, described once: what each trains on, whether the sparse-branch decoder is
in its model, what its result depends on, and the checkpoints it leaves.

A run (one arm, one seed) is the chain ``pretrain -> finetune -> eval`` of the stages its config
enables (:func:`enabled_stages`). :mod:`core.train` trains a stage by its description; the harness
plans, hashes, shares and tracks stages by the same one. Torch-free: every dry run reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from core.errors import UserError

if TYPE_CHECKING:
    from core.config import Config

__all__ = [
    "StageName",
    "TrainingStage",
    "StageSpec",
    "PRETRAIN",
    "FINETUNE",
    "EVAL",
    "STAGES",
    "TRAINING_STAGES",
    "LAST_CHECKPOINT",
    "BEST_CHECKPOINT",
    "enabled_stages",
]

StageName = Literal["pretrain", "finetune", "eval"]
TrainingStage = Literal["pretrain", "finetune"]

LAST_CHECKPOINT = "last.safetensors"  # the epoch checkpoint (weights + optimizer): its presence = resumable
BEST_CHECKPOINT = "best.safetensors"  # the weights selected on validation: what the next stage starts from


@dataclass(frozen=True)
class StageSpec:
    """One stage of the chain.

    Attributes:
        name: the stage, also its config section (``pretrain``, ``finetune``, ``eval``).
        captions: the captions it trains on; None for a stage that trains nothing (evaluation).
        decoder: whether the sparse-branch decoder is in its model; None: its parent's model.
        shared: its result is shared by every arm that agrees on its ``fields`` (the harness runs
            it once, as its own task, and the arms' stages depend on it).
        fields: the dotted config prefixes its result depends on; the parent's hash is added, so a
            stage lists only what it reads itself.
    """

    name: StageName
    captions: Literal["dense", "sparse"] | None
    decoder: bool | None
    shared: bool
    fields: tuple[str, ...]

    @property
    def trains(self) -> bool:
        return self.captions is not None


# The eval (val) settings that pick the checkpoint belong to the training stages; a stage never
# lists another stage's section.
PRETRAIN = StageSpec(
    "pretrain",
    captions="dense",
    decoder=False,  # dense text is embedded without the decoder: the arms of a decoder ablation share it
    shared=True,
    fields=(
        "data",
        "model.embed_dim",
        "model.image",
        "model.text",  # not model.decoder (see above)
        "pretrain",
        "eval.select_metric",
        "eval.every_epochs",
        "runtime.seed",
        "runtime.precision",
        "runtime.tf32",
    ),
)
FINETUNE = StageSpec(
    "finetune",
    captions="sparse",
    decoder=True,
    shared=False,
    fields=(
        "data",
        "model",
        "finetune",
        "eval.select_metric",
        "eval.every_epochs",
        "eval.batch_size",  # neutral unless the decoder's padding is unmasked (harness.plan)
        "runtime.seed",
        "runtime.precision",
        "runtime.tf32",
    ),
)
# The model section: a pre-train-only run is tested without fine-tuning, and how its text is
# embedded depends on the model's settings, which its parent does not hash.
EVAL = StageSpec(
    "eval", captions=None, decoder=None, shared=False, fields=("data", "model", "eval", "runtime.precision", "runtime.tf32")
)
STAGES: dict[StageName, StageSpec] = {spec.name: spec for spec in (PRETRAIN, FINETUNE, EVAL)}
TRAINING_STAGES: tuple[TrainingStage, ...] = ("pretrain", "finetune")  # chain order; each has <name>.enabled


def enabled_stages(config: Config) -> list[StageName]:
    """The stages a run of ``config`` goes through: its enabled training stages, then ``eval``.

    Raises:
        UserError: both training stages disabled (nothing to train).
    """
    training: list[StageName] = [name for name in TRAINING_STAGES if getattr(config, name).enabled]
    if not training:
        raise UserError("pretrain.enabled and finetune.enabled are both false: there is nothing to train")
    return [*training, EVAL.name]
