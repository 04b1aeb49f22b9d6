"""The one typed config tree: ``data / model / pretrain / finetune / eval / runtime``.

Every default is written once, here, on its field. Named settings are data
(``studies/settings/*.yaml``), not code. Choices are ``Literal`` types so a bad value fails at load
time with its key path. Defaults follow the released D2S-VSE code (paper-notes.md) except where the
released code has a known gap; those behaviours are reachable through explicitly named options.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.metric_keys import RSUM, SELECTABLE

__all__ = [
    "Section",
    "SynthScenesConfig",
    "TextAugmentConfig",
    "DataConfig",
    "ImageEncoderConfig",
    "TextEncoderConfig",
    "DecoderConfig",
    "ModelConfig",
    "AlignConfig",
    "DistillConfig",
    "StructureConfig",
    "OptimConfig",
    "StageConfig",
    "PretrainConfig",
    "FinetuneConfig",
    "EvalConfig",
    "RuntimeConfig",
    "Config",
    "DensifyConfig",
]

Pooling = Literal["gpo", "mean", "cls"]
# Retrieval metrics where higher is better (the candidates for checkpoint selection).
SelectMetric = Literal[SELECTABLE]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# ----------------------------------------------------------------------------------------- data
class SynthScenesConfig(Section):
    """The embedded benchmark: rendered scenes of simple objects, generated from a seed."""

    seed: int = 0  # the dataset's own seed, independent of runtime.seed
    num_train: int = Field(2000, ge=1)  # images per split
    num_val: int = Field(200, ge=1)  # images in the validation split (checkpoint selection)
    num_test: int = Field(200, ge=1)  # images in the test split
    image_size: int = Field(64, ge=16)  # rendered side in pixels
    min_objects: int = Field(2, ge=1)  # objects per scene, on a 3 x 3 grid
    max_objects: int = Field(4, ge=1)  # at most 9
    captions_per_image: int = Field(5, ge=1)  # sparse captions per image

    @model_validator(mode="after")
    def _objects_range(self) -> SynthScenesConfig:
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects ({self.min_objects}) > max_objects ({self.max_objects})")
        return self


class TextAugmentConfig(Section):
    """Token-level caption augmentation of the released code: of the `prob` share of tokens
    touched, `mask` become [MASK], `random` a random token, the rest are deleted."""

    enabled: bool = True  # train captions only
    prob: float = Field(0.2, ge=0.0, le=1.0)  # share of tokens touched
    mask: float = Field(0.5, ge=0.0, le=1.0)  # of those: share turned into [MASK]
    random: float = Field(0.1, ge=0.0, le=1.0)  # of those: share replaced by a random token; the rest are deleted

    @model_validator(mode="after")
    def _shares(self) -> TextAugmentConfig:
        if self.mask + self.random > 1.0:
            raise ValueError(f"mask + random shares exceed 1 ({self.mask} + {self.random})")
        return self


class DataConfig(Section):
    source: Literal["synthscenes", "karpathy", "laps"] = "synthscenes"  # the data source (core.data.SOURCES)
    # karpathy: the dataset_{flickr30k,coco}.json file; laps: the folder of {split}_caps.txt etc.
    annotations: str | None = None
    image_root: str | None = None  # folder the image file names are relative to
    dense_captions: str | None = None  # JSONL, one object per image (needed by pre-training)
    skip_missing_dense: bool = False  # else a missing dense caption is an error before training
    synthscenes: SynthScenesConfig = SynthScenesConfig()
    image_size: int = Field(224, ge=16)  # network input side, train and eval
    cache_margin: float = Field(1.15, ge=1.0)  # cached images keep this much extra side for crops
    # train crop: a share of each SIDE of the whole image, drawn uniformly from this range, at a
    # random place (the released code: 0.6-1.0); evaluation always sees the whole image
    crop_scale: tuple[float, float] = (0.6, 1.0)
    hflip: bool = True  # random horizontal flip (train); left/right words are swapped with it
    text_augment: TextAugmentConfig = TextAugmentConfig()
    # real data: evaluation splits (val, test) keep the first k sentences of each image, the VSE
    # protocol (Karpathy's COCO test has 25,010 sentences, the protocol 25,000); None keeps all
    captions_per_image: int | None = Field(5, ge=1)
    num_workers: int = Field(0, ge=0)  # DataLoader and decoding processes (0: in-process)

    @model_validator(mode="after")
    def _paths_for_real_data(self) -> DataConfig:
        if self.source != "synthscenes" and self.annotations is None:
            raise ValueError(f"data.annotations is required for source '{self.source}'")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        return self


# ---------------------------------------------------------------------------------------- model
class ImageEncoderConfig(Section):
    backbone: str = "vit_base_patch16_224"  # any timm model name
    pretrained: str | None = None  # local weights file or folder; None = random init
    backbone_args: dict[str, Any] = {}  # extra timm.create_model kwargs (tiny test models)
    pool: Pooling = "gpo"  # how token features become one embedding
    # the class/register tokens join the patch tokens in gpo/mean pooling (the released ViT path)
    pool_prefix_tokens: bool = False
    # train-time token dropping ("size augmentation"): with probability drop_patches_prob an image
    # drops each token with rate drop_patches * u, u ~ U(1 - drop_patches_prob, 1) (the released
    # ViT encoder: 0.2 and 0.8)
    drop_patches: float = Field(0.0, ge=0.0, lt=1.0)
    drop_patches_prob: float = Field(1.0, ge=0.0, le=1.0)  # share of images that drop tokens (see drop_patches)
    lr_mult: float = 0.1  # backbone learning rate multiplier


class TextEncoderConfig(Section):
    backbone: str = "bert-base-uncased"  # Hugging Face name, local path, or a bundled alias
    pretrained: bool = True  # False: random init from the backbone's config (+ config_overrides)
    config_overrides: dict[str, Any] = {}  # applied to the HF config (tiny random encoders)
    max_length: int = Field(128, ge=8)  # tokens of a sparse caption
    # tokens of a dense caption (pre-training, the dense teacher): LLaVA captions of Flickr30K
    # reach 180 BERT tokens
    dense_max_length: int = Field(256, ge=8)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)  # on backbone token features (released text path)
    pool: Pooling = "gpo"  # how token features become one embedding
    lr_mult: float = 0.1  # backbone learning rate multiplier


class DecoderConfig(Section):
    """The sparse-branch decoder: sparse token features + learnable tokens -> residual embedding."""

    depth: int = Field(4, ge=0)  # 0 = no decoder: the plain VSE baseline
    num_tokens: int = Field(100, ge=1)  # learnable tokens
    heads: int = Field(4, ge=1)  # attention heads (embed_dim must divide by it)
    mlp_ratio: float = Field(4.0, gt=0)  # MLP width / embed_dim
    placement: Literal["prefix", "postfix", "surround"] = "surround"  # learnable tokens before, after or around the words
    # sinusoidal positions over words + tokens; without them attention is order-blind, so
    # placement has no effect (False reproduces the released decoder)
    positions: bool = True
    mask_padding: bool = True  # False reproduces the released code (batch-dependent embeddings)
    # how t_hat joins the sparse embedding t_s (the LayerNorm output): unit = l2n(l2n(t_s) +
    # l2n(t_hat)) in training and evaluation; raw = l2n(t_s + t_hat), the released training path,
    # in both; released = raw in training, l2n(t_s + l2n(t_hat)) in evaluation (the released code)
    residual: Literal["unit", "raw", "released"] = "unit"


class ModelConfig(Section):
    embed_dim: int = Field(512, ge=1)  # the joint embedding size D
    image: ImageEncoderConfig = ImageEncoderConfig()
    text: TextEncoderConfig = TextEncoderConfig()
    decoder: DecoderConfig = DecoderConfig()


# --------------------------------------------------------------------------------------- losses
class AlignConfig(Section):
    """Cross-modal alignment of images and their captions."""

    loss: Literal["triplet", "infonce"] = "triplet"  # VSE++ hinge triplet or symmetric InfoNCE
    weight: float = 1.0  # multiplies the loss
    margin: float = 0.2  # triplet
    hardest_after_epoch: int = Field(1, ge=0)  # triplet: all negatives before this epoch
    # the loss's weight ramps linearly from 0 over this many epochs (the released trainer: 1)
    ramp_epochs: float = Field(0.0, ge=0)
    temperature: float = Field(0.05, gt=0)  # infonce: initial value (learnable)
    min_temperature: float = Field(0.01, gt=0)  # infonce: floor, keeps logits bounded

    @model_validator(mode="after")
    def _temperature_above_floor(self) -> AlignConfig:
        if self.temperature <= self.min_temperature:
            raise ValueError(f"temperature ({self.temperature}) must exceed min_temperature ({self.min_temperature})")
        return self


class DistillConfig(Section):
    """Dense-to-sparse distillation: frozen dense-caption teacher -> sparse-caption student."""

    enabled: bool = True  # fine-tuning distils the frozen dense teacher
    metric: Literal["cosine", "l2", "l1", "kl"] = "cosine"  # docs/method.md: all four at one scale
    weight: float = 1.0  # multiplies the loss
    temperature: float = Field(0.1, gt=0)  # kl: in-batch similarity distributions


class StructureConfig(Section):
    """Structure-aware relational distillation (RVLR, TIP 2024), usable in either stage.

    Teachers: by default frozen copies of the model's own encoders as they were when the stage
    started (in fine-tuning: the pre-trained image encoder and the dense-caption text encoder);
    ``image_teacher`` / ``text_teacher`` name a dedicated frozen unimodal backbone instead."""

    enabled: bool = False  # add the relational term in this stage
    metric: Literal["mae", "mse", "kl"] = "mae"  # distance between student and target relations
    weight: float = 2.0  # multiplies the loss (RVLR's relational weight)
    temperature: float = Field(0.1, gt=0)  # fixed: a learnable one lets the loss shrink itself
    mix_init: float = Field(0.5, ge=0.0, le=1.0)  # lambda: text vs image teacher relations
    learn_mix: bool = True  # lambda learnable, kept in [0, 1]
    image_teacher: str | None = None  # a timm model name; None: the model's own image encoder
    image_teacher_weights: str | None = None  # its local .safetensors file or folder (None: timm init)
    text_teacher: str | None = None  # an HF name, local folder or bundled alias; None: own text encoder

    @model_validator(mode="after")
    def _learnable_mix_inside(self) -> StructureConfig:
        # lambda = sigmoid(logit): a learnable mix cannot start at exactly 0 or 1
        if self.learn_mix and self.mix_init in (0.0, 1.0):
            raise ValueError(f"a learnable mix needs 0 < mix_init < 1, got {self.mix_init} (or set learn_mix: false)")
        return self


# ------------------------------------------------------------------------------------ training
class OptimConfig(Section):
    lr: float = Field(2e-4, gt=0)  # base learning rate (backbones: x lr_mult)
    weight_decay: float = Field(1e-4, ge=0)  # AdamW weight decay
    schedule: Literal["step", "cosine", "constant"] = "step"  # learning-rate schedule over the stage
    decay_epochs: list[int] = [9, 15, 20, 25]  # step schedule
    decay_factor: float = 0.3  # step schedule
    warmup_epochs: float = Field(0.0, ge=0)  # linear warm-up (fractional epochs allowed)
    grad_clip: float | None = 2.0  # max global grad norm; None disables
    # True: weight decay on every parameter (the released optimiser); False exempts biases,
    # norms, GPO, learnable tokens and the backbones' own no-decay parameters
    decay_all: bool = False


class StageConfig(Section):
    enabled: bool = True  # false skips the stage (the stage ablation)
    epochs: int = Field(30, ge=0)  # 0: the initial model is the stage's output
    batch_size: int = Field(128, ge=2)  # global batch (split across processes)
    optim: OptimConfig = OptimConfig()
    align: AlignConfig = AlignConfig()
    structure: StructureConfig = StructureConfig()


class PretrainConfig(StageConfig):
    """Stage 1: align images with dense captions."""


class FinetuneConfig(StageConfig):
    """Stage 2: align images with sparse captions + dense-to-sparse distillation."""

    distill: DistillConfig = DistillConfig()


class EvalConfig(Section):
    batch_size: int = Field(256, ge=1)  # images or captions embedded at once
    select_metric: SelectMetric = RSUM  # validation metric that picks the checkpoint
    every_epochs: int = Field(1, ge=1)  # validate every this many epochs (and at the last)
    fold_size: int | None = None  # images per fold for k-fold test (COCO 1K: 1000)
    # whole: test/<metric> over the whole test split (COCO 5K; the fold means go to test1k/);
    # folds: test/<metric> is the mean over folds of fold_size images and the per-query ranks are
    # ranked within their fold (a fixed gallery size, and more queries for a tighter interval)
    test_on: Literal["whole", "folds"] = "whole"

    @model_validator(mode="after")
    def _folds_need_a_size(self) -> EvalConfig:
        if self.test_on == "folds" and self.fold_size is None:
            raise ValueError("test_on: folds needs fold_size (images per fold)")
        return self


class RuntimeConfig(Section):
    seed: int = 0  # drives python, numpy, torch and data order
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    tf32: bool = True  # TF32 matmuls on CUDA
    fused_adamw: bool = True  # when the device supports it
    log_every_steps: int = Field(50, ge=1)  # progress events (and finiteness checks) every this many steps


class Config(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    pretrain: PretrainConfig = PretrainConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    eval: EvalConfig = EvalConfig()
    runtime: RuntimeConfig = RuntimeConfig()


# ------------------------------------------------------------------------------------- densify
class DensifyConfig(Section):
    """How ``harness densify`` generates dense captions (not part of a training run's tree).
    Defaults are the D2S-VSE authors' settings."""

    model: str  # local folder saved with save_pretrained: processor + image-text-to-text model
    model_id: str | None = None  # recorded in every line; None: the model folder's name
    prompt: str = "Describe this image in detail."  # the instruction given with each image
    top_p: float = Field(0.9, gt=0.0, le=1.0)  # nucleus sampling mass
    temperature: float = Field(0.2, ge=0.0)  # 0: greedy decoding (top_p unused)
    max_new_tokens: int = Field(500, ge=1)  # the longest caption, in tokens
    batch_size: int = Field(8, ge=1)  # images per generation batch
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    seed: int = 0  # sampling seed
