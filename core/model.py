"""D2S-VSE: image and text encoders, GPO pooling, the sparse-branch decoder, and the model.

Image: timm backbone tokens -> Linear -> pooling -> L2 norm. Text: HF backbone tokens -> Linear +
residual MLP -> pooling -> LayerNorm (the released text path) -> L2 norm. The sparse-branch decoder
reads the projected text tokens plus learnable tokens and adds its pooled output to the text
embedding (paper-notes.md, section 1). ``embed_images`` / ``embed_texts`` are the only road to an
embedding, in training and evaluation alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import Mlp
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from core.config import (
    Config,
    DecoderConfig,
    ImageEncoderConfig,
    ModelConfig,
    OptimConfig,
    TextEncoderConfig,
)
from core.checks import TEXT_BACKBONE_ALIASES, check_image_backbone, image_weights_file, text_backbone_source
from core.errors import UserError, did_you_mean

__all__ = [
    "D2SVSE",
    "build_model",
    "GPO",
    "MeanPool",
    "ClsPool",
    "POOLS",
    "ResidualMLPProjection",
    "PixelNormalize",
    "create_image_backbone",
    "create_text_backbone",
    "ImageEncoder",
    "TextEncoder",
    "DecoderLayout",
    "SparseDecoder",
    "RESIDUALS",
    "TEXT_BACKBONE_ALIASES",
    "sinusoid_positions",
]


# -------------------------------------------------------------------------------------- pooling
def sinusoid_positions(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Fixed sin/cos position encodings (Vaswani et al. 2017), ``(length, dim)``.

    Args:
        length: number of positions.
        dim: encoding size; an odd size drops the last cosine column.
    """
    half = (dim + 1) // 2
    freq = torch.exp(torch.arange(half, device=device) * (-2.0 * math.log(10000.0) / (2 * half)))
    angle = torch.arange(length, device=device)[:, None] * freq[None]  # (length, half)
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1)[:, :dim]


class GPO(nn.Module):
    """Generalized pooling operator (VSE-infinity, Chen et al. CVPR 2021).

    Each dimension's features are sorted in descending order and summed with per-rank weights. The
    weights come from a bi-GRU over position encodings of the ranks, so they depend only on the
    number of valid features; a softmax with temperature 0.1 makes them a distribution.
    """

    temperature = 0.1  # VSE-infinity's fixed softmax temperature

    def __init__(self, d_pe: int = 32, d_hidden: int = 32):
        super().__init__()
        self.d_pe = d_pe
        self.gru = nn.GRU(d_pe, d_hidden, batch_first=True, bidirectional=True)
        self.score = nn.Linear(d_hidden, 1, bias=False)

    def weights(self, lengths: torch.Tensor, max_len: int) -> torch.Tensor:
        """Per-rank weights ``(B, max_len, 1)`` for sequences of ``lengths`` valid features."""
        # the weights depend on the length only: run the GRU once per distinct length
        lengths, inverse = lengths.unique(return_inverse=True)  # (U,), (B,)
        valid = torch.arange(max_len, device=lengths.device)[None] < lengths[:, None]  # (U, L)
        pe = sinusoid_positions(max_len, self.d_pe, lengths.device).expand(len(lengths), -1, -1)
        pe = pe.to(self.score.weight.dtype)
        # packing runs the GRU over exactly each sequence's valid ranks, so padding cannot leak in
        packed = pack_padded_sequence(pe, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=max_len)
        forward, backward = out.chunk(2, dim=-1)  # (U, L, H) each
        scores = self.score((forward + backward) / 2).masked_fill(~valid[..., None], -math.inf)
        return torch.softmax(scores / self.temperature, dim=1)[inverse]  # (B, L, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pool ``x`` ``(B, L, D)`` over its valid positions ``mask`` ``(B, L)`` -> ``(B, D)``."""
        lengths = mask.sum(dim=1)
        ranked = x.masked_fill(~mask[..., None], -math.inf).sort(dim=1, descending=True).values
        valid = torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None]  # (B, L)
        ranked = ranked.masked_fill(~valid[..., None], 0.0)  # invalid features sorted last
        return (ranked * self.weights(lengths, x.shape[1])).sum(dim=1)


class MeanPool(nn.Module):
    """Mean of the valid positions."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[..., None].to(x.dtype)  # (B, L, 1)
        return (x * m).sum(dim=1) / m.sum(dim=1)


class ClsPool(nn.Module):
    """The first token (the class token of ViTs, [CLS] of BERT-like text encoders)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


POOLS: dict[str, Callable[[], nn.Module]] = {"gpo": GPO, "mean": MeanPool, "cls": ClsPool}


def _build_pool(name: str) -> nn.Module:
    if name not in POOLS:
        raise UserError(f"unknown pooling '{name}'; valid: {', '.join(POOLS)}")
    return POOLS[name]()


class ResidualMLPProjection(nn.Module):
    """Linear projection plus a two-layer MLP residual (the released text path).

    The released MLP normalises its hidden layer with BatchNorm over all tokens, padding included,
    which makes a caption's embedding depend on its batch; LayerNorm keeps it per token.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        hidden = max(out_dim // 2, 1)
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Linear(hidden, out_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.mlp(x)


# -------------------------------------------------------------------------------- image encoder
# feature maps -> tokens (B, H*W, C); timm CNNs give NCHW, Swin-like models declare NHWC
_MAP_TO_TOKENS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "NCHW": lambda f: f.flatten(2).transpose(1, 2),
    "NHWC": lambda f: f.flatten(1, 2),
}


def create_image_backbone(
    cfg: ImageEncoderConfig, options: tuple[str, str] = ("model.image.backbone", "model.image.pretrained")
) -> nn.Module:
    """The timm backbone of ``cfg`` (``num_classes=0``, dynamic image size where supported),
    from ``cfg.pretrained`` weights when given; never from the hub.

    Args:
        cfg: backbone name, weights, extra timm arguments.
        options: the config keys of the name and of the weights, for error messages.
    """
    check_image_backbone(cfg.backbone, options[0])
    kwargs: dict[str, Any] = {"num_classes": 0, **cfg.backbone_args}
    if cfg.pretrained is not None:
        # timm's own loader: applies the model's checkpoint filter (position embedding resizing)
        # and drops the classifier; 'source: file' keeps it from ever asking the hub
        file = image_weights_file(cfg.pretrained, options[1])
        kwargs |= {"pretrained": True, "pretrained_cfg_overlay": {"source": "file", "file": str(file)}}
    try:
        try:
            # ViT-likes interpolate position embeddings to any input size (training at 384 px, ...)
            return timm.create_model(cfg.backbone, **{"dynamic_img_size": True, **kwargs})
        except TypeError as err:
            if "dynamic_img_size" not in str(err) or "dynamic_img_size" in cfg.backbone_args:
                raise
            return timm.create_model(cfg.backbone, **kwargs)  # CNNs take any input size as they are
    except (TypeError, ValueError, RuntimeError, AssertionError) as err:
        weights = f" and weights {cfg.pretrained}" if cfg.pretrained is not None else ""
        raise UserError(
            f"{options[0]}: cannot create {cfg.backbone} with backbone_args={cfg.backbone_args}"
            f"{weights}: {err}"
        ) from None


class PixelNormalize(nn.Module):
    """uint8 ``(B, 3, H, W)`` -> float, normalised with the backbone's own mean/std (ImageNet's
    when it declares none)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        pretrained_cfg = getattr(backbone, "pretrained_cfg", {}) or {}
        mean = pretrained_cfg.get("mean", IMAGENET_DEFAULT_MEAN)
        std = pretrained_cfg.get("std", IMAGENET_DEFAULT_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std


class ImageEncoder(nn.Module):
    """timm backbone tokens -> Linear(C -> D) -> pooling -> L2 norm.

    Args:
        backbone: a timm model made with ``num_classes=0``.
        cfg: the ``model.image`` section (pooling, patch dropping).
        embed_dim: the joint embedding size D.
    """

    def __init__(self, backbone: nn.Module, cfg: ImageEncoderConfig, embed_dim: int):
        super().__init__()
        self.backbone = backbone
        self.num_prefix_tokens = getattr(backbone, "num_prefix_tokens", 0)
        self.map_format = str(getattr(backbone, "output_fmt", "NCHW"))
        self.pool = _build_pool(cfg.pool)
        self.reads_first_token = isinstance(self.pool, ClsPool)
        if self.reads_first_token and self.num_prefix_tokens == 0:
            raise UserError(
                f"model.image.pool=cls needs a class token; {cfg.backbone} has none (use gpo or mean)"
            )
        # tokens the pooling reads start here: 0 keeps the class/register tokens with the patches
        self.first_token = 0 if cfg.pool_prefix_tokens else self.num_prefix_tokens
        self.drop_patches = cfg.drop_patches
        self.drop_patches_prob = cfg.drop_patches_prob
        self.normalize = PixelNormalize(backbone)
        self.proj = nn.Linear(backbone.num_features, embed_dim)
        nn.init.xavier_uniform_(self.proj.weight)  # as released
        nn.init.zeros_(self.proj.bias)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone token features ``(B, N, C)``, prefix (class, register) tokens included."""
        feats = self.backbone.forward_features(images)
        if feats.ndim == 4:
            if self.map_format not in _MAP_TO_TOKENS:
                raise UserError(f"model.image.backbone: unsupported feature map format {self.map_format}")
            feats = _MAP_TO_TOKENS[self.map_format](feats)  # (B, H*W, C)
        return feats

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embed ``(B, 3, H, W)`` images (uint8, or float already normalised) -> ``(B, D)``."""
        if images.dtype == torch.uint8:
            images = self.normalize(images)
        feats = self.tokens(images)  # (B, N, C)
        feats = feats[:, :1] if self.reads_first_token else feats[:, self.first_token :]
        mask = torch.ones(feats.shape[:2], dtype=torch.bool, device=feats.device)  # (B, N)
        if self.training and self.drop_patches > 0:
            mask = self._drop_mask(mask)
        x = self.pool(self.proj(feats), mask)  # (B, D)
        return F.normalize(x, dim=-1)

    def _drop_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """VSE-infinity's size augmentation, as the released encoder draws it: per image one
        ``u ~ U(0, 1)``; an image with ``u > 1 - drop_patches_prob`` drops each token with rate
        ``drop_patches * u``, the others keep every token. Pooling then sees a smaller, variable
        token set."""
        u = torch.rand(mask.shape[0], 1, device=mask.device)  # (B, 1)
        rate = torch.where(u > 1 - self.drop_patches_prob, self.drop_patches * u, torch.zeros_like(u))
        keep = torch.rand(mask.shape, device=mask.device) >= rate  # (B, N)
        keep[:, 0] |= ~keep.any(dim=1)  # never an empty image
        return keep


# --------------------------------------------------------------------------------- text encoder
def _offline(load: Callable[..., Any], source: str, name: str, option: str, **kwargs: Any) -> Any:
    """Call an HF ``from_pretrained`` without network: local folders and the local cache only."""
    try:
        return load(source, local_files_only=True, **kwargs)
    except (OSError, ValueError) as err:
        raise UserError(
            f"{option} '{name}' cannot be loaded offline: it must be a local folder, a "
            f"bundled alias ({', '.join(TEXT_BACKBONE_ALIASES)}) or in the local Hugging Face cache"
            f" ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from None


def create_text_backbone(cfg: TextEncoderConfig, option: str = "model.text.backbone") -> tuple[nn.Module, Any]:
    """The Hugging Face encoder and tokenizer of ``cfg``, loaded offline (local folders, bundled
    aliases, the local cache).

    Args:
        cfg: backbone name, pretrained or random init, config overrides.
        option: the config key of the name, for error messages.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per model load: noise in every stage's log
    source = text_backbone_source(cfg.backbone)
    hf_config = _offline(AutoConfig.from_pretrained, source, cfg.backbone, option)
    known = hf_config.to_dict()
    for key, value in cfg.config_overrides.items():
        if key not in known:
            raise UserError(
                f"model.text.config_overrides: '{key}' is not a field of {type(hf_config).__name__}"
                + did_you_mean(key, known)
            )
        setattr(hf_config, key, value)
    if cfg.pretrained:
        model = _offline(AutoModel.from_pretrained, source, cfg.backbone, option, config=hf_config)
    else:
        model = AutoModel.from_config(hf_config)
    if getattr(model, "pooler", None) is not None:
        # token features only: an unused pooler gets no gradient (DDP rejects such parameters)
        model.pooler = None
    tokenizer = _offline(AutoTokenizer.from_pretrained, source, cfg.backbone, option)
    return model, tokenizer


class TextEncoder(nn.Module):
    """HF backbone tokens -> Linear + residual MLP -> pooling -> LayerNorm (un-normalised).

    Args:
        backbone: a Hugging Face encoder returning ``last_hidden_state``.
        tokenizer: its tokenizer.
        cfg: the ``model.text`` section.
        embed_dim: the joint embedding size D.
    """

    def __init__(self, backbone: nn.Module, tokenizer: Any, cfg: TextEncoderConfig, embed_dim: int):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.max_length = cfg.max_length
        self.dense_max_length = cfg.dense_max_length
        positions = getattr(backbone.config, "max_position_embeddings", None)
        if positions is not None and max(cfg.max_length, cfg.dense_max_length) > positions:
            raise UserError(
                f"model.text: max_length={cfg.max_length} / dense_max_length={cfg.dense_max_length} exceed"
                f" the {positions} positions of {cfg.backbone}"
            )
        self.dropout = nn.Dropout(cfg.dropout)
        self.proj = ResidualMLPProjection(backbone.config.hidden_size, embed_dim)
        self.pool = _build_pool(cfg.pool)
        self.norm = nn.LayerNorm(embed_dim)  # the released text path ends in a LayerNorm

    def tokenize(self, captions: Sequence[str], dense: bool = False) -> dict[str, torch.Tensor]:
        """Captions -> ``input_ids`` and ``attention_mask``, both ``(B, L)`` long, truncated to
        ``dense_max_length`` tokens if ``dense`` else ``max_length``."""
        length = self.dense_max_length if dense else self.max_length
        out = self.tokenizer(list(captions), padding=True, truncation=True, max_length=length, return_tensors="pt")
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (LayerNorm output ``(B, D)``, not yet L2-normalised; projected token features ``(B, L, D)``)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        tokens = self.proj(self.dropout(hidden))  # (B, L, D)
        return self.norm(self.pool(tokens, attention_mask.bool())), tokens


# ------------------------------------------------------------------------------ sparse decoder
class SelfAttention(nn.Module):
    """Multi-head self-attention with a key mask, through ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.heads, D // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # (B, h, T, d) each
        attn_mask = key_mask[:, None, None, :] if key_mask is not None else None  # True = attend
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, h, T, d)
        return self.proj(x.transpose(1, 2).reshape(B, T, D))


class DecoderBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


# placement -> how many of the n learnable tokens go before the words (the rest go after)
PLACEMENTS: dict[str, Callable[[int], int]] = {
    "prefix": lambda n: n,
    "postfix": lambda n: 0,
    "surround": lambda n: (n + 1) // 2,
}


@dataclass(frozen=True)
class DecoderLayout:
    """Where each word and learnable token sits in the decoder's sequence of ``L + n`` slots.

    ``word_slots`` ``(B, L)``: slot of each (possibly padding) word position; ``token_slots``
    ``(B, n)``: slot of each learnable token; ``valid`` ``(B, L + n)``: slot holds a real word or a
    learnable token (False: padding). Padding slots come last, after the "after" tokens.
    """

    word_slots: torch.Tensor
    token_slots: torch.Tensor
    valid: torch.Tensor


class SparseDecoder(nn.Module):
    """The sparse-branch decoder of D2S-VSE: the sparse caption read as a masked dense caption.

    The projected sparse token features and ``num_tokens`` learnable tokens (placed before, after,
    or around each caption's real words) go through ``depth`` pre-norm transformer blocks and a
    LayerNorm; the learnable tokens' outputs are mean-pooled into the residual ``t_hat`` that
    :meth:`D2SVSE.embed_texts` adds to the sparse embedding.

    Args:
        cfg: the ``model.decoder`` section (depth >= 1).
        dim: token width, the joint embedding size.
    """

    def __init__(self, cfg: DecoderConfig, dim: int):
        super().__init__()
        if dim % cfg.heads:
            raise UserError(f"model.embed_dim={dim} is not divisible by model.decoder.heads={cfg.heads}")
        self.tokens = nn.Parameter(torch.randn(cfg.num_tokens, dim))  # N(0, 1) as released
        self.num_before = PLACEMENTS[cfg.placement](cfg.num_tokens)
        self.blocks = nn.ModuleList(DecoderBlock(dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(dim)
        self.positions = cfg.positions
        self.mask_padding = cfg.mask_padding

    def layout(self, mask: torch.Tensor) -> DecoderLayout:
        """The slot layout for word masks ``(B, L)`` (True = real word, any padding side)."""
        B, L = mask.shape
        n, before = len(self.tokens), self.num_before
        lengths = mask.sum(dim=1, keepdim=True)  # (B, 1)
        real_slot = before + mask.cumsum(dim=1) - 1  # real words in order, after the "before" tokens
        pad_slot = lengths + n + (~mask).cumsum(dim=1) - 1  # padding at the very end
        word_slots = torch.where(mask, real_slot, pad_slot)  # (B, L)
        k = torch.arange(n, device=mask.device)[None]  # (1, n)
        # "after" tokens sit right after each caption's own last word, not after the padding
        token_slots = torch.where(k < before, k, lengths + k).expand(B, n)  # (B, n)
        valid = torch.arange(L + n, device=mask.device)[None] < lengths + n  # (B, L + n)
        return DecoderLayout(word_slots, token_slots, valid)

    def forward(self, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The residual ``t_hat`` for the sparse embedding, ``(B, D)`` (the LayerNorm's scale).

        Args:
            words: projected sparse token features ``(B, L, D)``.
            mask: ``(B, L)`` True at real words.
        """
        B, L, D = words.shape
        layout = self.layout(mask.bool())
        seq = torch.cat([words, self.tokens.to(words.dtype).expand(B, -1, -1)], dim=1)  # (B, L + n, D)
        slots = torch.cat([layout.word_slots, layout.token_slots], dim=1)  # (B, L + n), a permutation
        x = seq.gather(1, slots.argsort(dim=1)[..., None].expand(-1, -1, D))  # (B, L + n, D) in slot order
        if self.positions:
            x = x + sinusoid_positions(L + len(self.tokens), D, x.device).to(x.dtype)
        key_mask = layout.valid if self.mask_padding else None
        for block in self.blocks:
            x = block(x, key_mask)
        x = self.norm(x)
        return x.gather(1, layout.token_slots[..., None].expand(-1, -1, D)).mean(dim=1)  # (B, D)


# --------------------------------------------------------------------------------------- model
# residual(t_s (B, D) LayerNorm output, t_hat (B, D), training) -> the sum to L2-normalise
RESIDUALS: dict[str, Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]] = {
    # both unit: the residual weighs as much as the sparse embedding, in training and evaluation
    "unit": lambda t_s, t_hat, training: F.normalize(t_s, dim=-1) + F.normalize(t_hat, dim=-1),
    # the released training path (both raw), in training and evaluation
    "raw": lambda t_s, t_hat, training: t_s + t_hat,
    # the released code: raw in training; in evaluation a unit residual on the raw LayerNorm
    # output, where it weighs about 1/sqrt(D)
    "released": lambda t_s, t_hat, training: t_s + (t_hat if training else F.normalize(t_hat, dim=-1)),
}


def _build_image_encoder(cfg: ModelConfig) -> ImageEncoder:
    return ImageEncoder(create_image_backbone(cfg.image), cfg.image, cfg.embed_dim)


def _build_text_encoder(cfg: ModelConfig) -> TextEncoder:
    backbone, tokenizer = create_text_backbone(cfg.text)
    return TextEncoder(backbone, tokenizer, cfg.text, cfg.embed_dim)


def _build_decoder(cfg: ModelConfig) -> SparseDecoder | None:
    # depth 0 is the plain VSE baseline: no decoder module, no decoder parameters
    return SparseDecoder(cfg.decoder, cfg.embed_dim) if cfg.decoder.depth > 0 else None


class D2SVSE(nn.Module):
    """Image and text encoders plus the sparse-branch decoder; ``forward`` computes no loss.

    Args:
        cfg: the ``model`` section.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.image = _build_image_encoder(cfg)
        self.text = _build_text_encoder(cfg)
        self.decoder = _build_decoder(cfg)

    @property
    def tokenizer(self) -> Any:
        """The HF tokenizer of the text backbone."""
        return self.text.tokenizer

    @property
    def device(self) -> torch.device:
        return self.image.proj.weight.device

    def tokenize(self, captions: Sequence[str], dense: bool = False) -> dict[str, torch.Tensor]:
        """Captions -> ``{"input_ids", "attention_mask"}``, both ``(B, L)`` long, on the CPU;
        ``dense`` truncates at ``model.text.dense_max_length`` instead of ``max_length``."""
        return self.text.tokenize(captions, dense=dense)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings ``(B, D)``.

        Args:
            images: ``(B, 3, H, W)``; uint8 is normalised inside (on the model's device, with the
                backbone's mean/std), float is taken as already normalised.
        """
        return self.image(images.to(self.device, non_blocking=True))

    def embed_texts(
        self, captions: Sequence[str] | Mapping[str, torch.Tensor], decoder: bool = True
    ) -> torch.Tensor:
        """L2-normalised caption embeddings ``(B, D)``; independent of the other captions.

        Args:
            captions: strings, or a tokenized dict with ``input_ids`` and ``attention_mask``.
            decoder: add the sparse-branch decoder's residual (sparse captions). False gives the
                dense branch (pre-training, the frozen dense teacher); without a decoder
                (depth 0) both are the same. With False, strings are tokenized as dense captions.
        How the residual joins the sparse embedding is ``model.decoder.residual``
        (:data:`RESIDUALS`).
        """
        tokens = captions if isinstance(captions, Mapping) else self.tokenize(captions, dense=not decoder)
        ids = tokens["input_ids"].to(self.device, non_blocking=True)
        mask = tokens["attention_mask"].to(self.device, non_blocking=True)
        emb, words = self.text(ids, mask)  # (B, D) LayerNorm output, (B, L, D)
        if decoder and self.decoder is not None:
            residual = self.decoder(words, mask.bool())  # (B, D)
            emb = RESIDUALS[self.config.decoder.residual](emb, residual, self.training)
        return F.normalize(emb, dim=-1)

    def forward(
        self, images: torch.Tensor, texts: Sequence[str] | Mapping[str, torch.Tensor], decoder: bool = True
    ) -> dict[str, torch.Tensor]:
        """``{"image": (B, D), "text": (B, D)}``, named as the losses' arguments."""
        return {"image": self.embed_images(images), "text": self.embed_texts(texts, decoder=decoder)}

    def param_groups(
        self, optim: OptimConfig, image_lr_mult: float | None = None, text_lr_mult: float | None = None
    ) -> list[dict[str, Any]]:
        """Optimiser groups: backbones at ``lr * lr_mult``, the rest at ``lr``; no weight decay on
        biases, norms, GPO, learnable tokens and the backbones' own no-decay parameters.

        Args:
            optim: the stage's optimiser section (``lr``, ``weight_decay``).
            image_lr_mult: image backbone multiplier; default ``model.image.lr_mult``.
            text_lr_mult: text backbone multiplier; default ``model.text.lr_mult``.
        Each group carries ``lr_mult`` so a schedule can set ``lr = base * lr_mult * factor``.
        ``optim.decay_all`` decays every parameter (the released optimiser).
        """
        image_lr_mult = self.config.image.lr_mult if image_lr_mult is None else image_lr_mult
        text_lr_mult = self.config.text.lr_mult if text_lr_mult is None else text_lr_mult
        mult_of = {id(p): image_lr_mult for p in self.image.backbone.parameters()}
        mult_of |= {id(p): text_lr_mult for p in self.text.backbone.parameters()}
        no_decay = set() if optim.decay_all else self._no_decay_ids()
        grouped: dict[tuple[float, bool], list[nn.Parameter]] = {}
        for p in self.parameters():
            if p.requires_grad:
                key = (mult_of.get(id(p), 1.0), id(p) not in no_decay)
                grouped.setdefault(key, []).append(p)
        return [
            {
                "params": params,
                "lr": optim.lr * mult,
                "lr_mult": mult,
                "weight_decay": optim.weight_decay if decay else 0.0,
            }
            for (mult, decay), params in grouped.items()
        ]

    def _no_decay_ids(self) -> set[int]:
        ids = {id(p) for p in self.parameters() if p.ndim <= 1}  # biases, norm scales
        ids |= {id(p) for m in self.modules() if isinstance(m, GPO) for p in m.parameters()}
        if self.decoder is not None:
            ids.add(id(self.decoder.tokens))
        backbone = self.image.backbone
        # timm names its own (position embeddings, class tokens)
        names = backbone.no_weight_decay() if hasattr(backbone, "no_weight_decay") else set()
        ids |= {id(p) for name, p in backbone.named_parameters() if name in names}
        return ids


def build_model(config: Config | ModelConfig) -> D2SVSE:
    """Build D2S-VSE from the whole config or its ``model`` section.

    Args:
        config: a resolved :class:`Config` (its ``model`` section is used) or a :class:`ModelConfig`.
    """
    return D2SVSE(config.model if isinstance(config, Config) else config)
