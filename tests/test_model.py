"""The model: token layout of the sparse-branch decoder, batch independence, pooling, encoders."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from core.config import DecoderConfig, ImageEncoderConfig, ModelConfig, OptimConfig
from core.errors import UserError
from core.model import (
    GPO,
    TEXT_BACKBONE_ALIASES,
    D2SVSE,
    ImageEncoder,
    SparseDecoder,
    create_image_backbone,
    build_model,
)
from harness.config import resolve

PLACEMENTS = ["prefix", "postfix", "surround"]
SHORT = "a red cube"
LONG = "a small green cylinder to the right of a large yellow cone in front of a purple sphere on grass"


def _model(**overrides) -> D2SVSE:
    torch.manual_seed(0)
    return build_model(resolve(overrides=overrides)).eval()


@pytest.fixture(scope="module")
def small() -> D2SVSE:
    """The cpu-small setting's model, in eval mode."""
    return _model()


def _images(n: int = 2, size: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)


def _decoder(placement: str, num_tokens: int = 5, dim: int = 8, **kwargs) -> SparseDecoder:
    torch.manual_seed(0)
    cfg = DecoderConfig(depth=2, num_tokens=num_tokens, heads=2, placement=placement, **kwargs)
    return SparseDecoder(cfg, dim).eval()


def _naive_layout(lengths: list[int], max_len: int, n: int, before: int) -> list[list[str]]:
    """Per caption, what each slot holds: T(oken), W(ord) or P(adding)."""
    return [["T"] * before + ["W"] * k + ["T"] * (n - before) + ["P"] * (max_len - k) for k in lengths]


# ------------------------------------------------------------------------------ decoder layout
@pytest.mark.parametrize(("placement", "before"), [("prefix", 5), ("postfix", 0), ("surround", 3)])
def test_placement_puts_tokens_before_after_or_around_each_captions_words(placement, before):
    decoder = _decoder(placement, num_tokens=5)
    lengths, max_len = [2, 4, 1], 4
    mask = torch.arange(max_len)[None] < torch.tensor(lengths)[:, None]
    layout = decoder.layout(mask)

    for row, expected in enumerate(_naive_layout(lengths, max_len, 5, before)):
        kinds = ["P"] * len(expected)
        for slot in layout.token_slots[row].tolist():
            kinds[slot] = "T"
        for word, slot in enumerate(layout.word_slots[row].tolist()):
            kinds[slot] = "W" if mask[row, word] else "P"
        assert kinds == expected
        assert layout.valid[row].tolist() == [kind != "P" for kind in expected]
        real = layout.word_slots[row, : lengths[row]].tolist()
        assert real == list(range(before, before + lengths[row]))  # words keep their order


@pytest.mark.parametrize(("num_tokens", "before"), [(5, 3), (4, 2), (1, 1)])
def test_surround_puts_ceil_half_before_and_floor_half_after(num_tokens, before):
    decoder = _decoder("surround", num_tokens=num_tokens)
    layout = decoder.layout(torch.ones(1, 3, dtype=torch.bool))
    slots = layout.token_slots[0].tolist()  # a caption of 3 words occupies slots before..before+2
    assert [slot for slot in slots if slot < before] == list(range(before))
    assert [slot for slot in slots if slot >= before] == list(range(before + 3, 3 + num_tokens))


def test_layout_handles_left_padding_like_right_padding():
    decoder = _decoder("surround")
    right = decoder.layout(torch.tensor([[True, True, False]]))
    left = decoder.layout(torch.tensor([[False, True, True]]))
    assert right.token_slots.tolist() == left.token_slots.tolist()
    assert right.word_slots[0, :2].tolist() == left.word_slots[0, 1:].tolist()


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_decoder_residual_ignores_padding_content_and_side(placement):
    decoder = _decoder(placement)
    words = torch.randn(1, 3, 8)
    garbage = torch.full((1, 4, 8), 1e3)
    mask = torch.tensor([[True] * 3 + [False] * 4])
    alone = decoder(words, torch.ones(1, 3, dtype=torch.bool))
    right = decoder(torch.cat([words, garbage], 1), mask)
    left = decoder(torch.cat([garbage, words], 1), mask.flip(1))
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)


def test_placement_matters_only_with_positions():
    words, mask = torch.randn(2, 4, 8), torch.ones(2, 4, dtype=torch.bool)
    # without positions attention is order-blind: every placement gives the same output
    blind = [_decoder(p, positions=False)(words, mask) for p in PLACEMENTS]
    torch.testing.assert_close(blind[0], blind[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(blind[0], blind[2], atol=1e-5, rtol=0)
    placed = [_decoder(p)(words, mask) for p in PLACEMENTS]
    assert not torch.allclose(placed[0], placed[1], atol=1e-3)
    assert not torch.allclose(placed[1], placed[2], atol=1e-3)


@pytest.mark.parametrize(("residual", "training"), [("unit", False), ("raw", False), ("released", True), ("released", False)])
def test_sparse_embedding_adds_the_residual_as_configured(residual, training):
    """unit: l2n(l2n(t_s) + l2n(t_hat)); raw, the released training path: l2n(t_s + t_hat);
    released: raw in training, l2n(t_s + l2n(t_hat)) in evaluation (t_s: the LayerNorm output)."""
    model = _model(**{"model.decoder.residual": residual}).train(training)
    tokens = model.tokenize([SHORT, LONG])
    with torch.no_grad():  # the same seed before each pass: training mode draws the same dropout
        torch.manual_seed(0)
        t_s, words = model.text(tokens["input_ids"], tokens["attention_mask"])
        t_hat = model.decoder(words, tokens["attention_mask"].bool())
        torch.manual_seed(0)
        got = model.embed_texts(tokens)
    F = torch.nn.functional
    expected = {
        "unit": F.normalize(t_s, dim=-1) + F.normalize(t_hat, dim=-1),
        "raw": t_s + t_hat,
        "released": t_s + (t_hat if training else F.normalize(t_hat, dim=-1)),
    }[residual]
    assert t_s.norm(dim=-1).min() > 5  # the LayerNorm scale, about sqrt(D), not 1
    torch.testing.assert_close(got, F.normalize(expected, dim=-1))


# --------------------------------------------------------------------- baseline and invariance
def test_depth_zero_has_no_decoder_and_equals_the_baseline():
    model = _model(**{"model.decoder.depth": 0})
    assert model.decoder is None
    assert not [name for name, _ in model.named_parameters() if "decoder" in name]
    with torch.no_grad():
        with_decoder = model.embed_texts([SHORT, LONG])
        torch.testing.assert_close(with_decoder, model.embed_texts([SHORT, LONG], decoder=False))


def test_decoder_changes_the_text_embedding(small):
    with torch.no_grad():
        sparse, dense = small.embed_texts([SHORT]), small.embed_texts([SHORT], decoder=False)
    assert not torch.allclose(sparse, dense, atol=1e-3)


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_caption_embedding_does_not_depend_on_the_rest_of_its_batch(placement):
    model = _model(**{"model.decoder.placement": placement})
    with torch.no_grad():
        alone = model.embed_texts([SHORT])[0]
        batched = model.embed_texts([SHORT, LONG])[0]
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)


def test_unmasked_padding_reproduces_the_released_batch_dependence():
    model = _model(**{"model.decoder.mask_padding": False})
    with torch.no_grad():
        alone = model.embed_texts([SHORT])[0]
        batched = model.embed_texts([SHORT, LONG])[0]
    assert (batched - alone).abs().max() > 1e-4


# ------------------------------------------------------------------------------------- pooling
def test_gpo_ignores_padding_and_weights_sum_to_one():
    torch.manual_seed(0)
    gpo = GPO()
    x = torch.randn(2, 6, 8)
    x[0, 3:] = 1e4  # padding content must not matter
    mask = torch.arange(6)[None] < torch.tensor([[3], [6]])
    pooled = gpo(x, mask)
    torch.testing.assert_close(pooled[0], gpo(x[:1, :3], torch.ones(1, 3, dtype=torch.bool))[0])
    torch.testing.assert_close(pooled[1], gpo(x[1:], mask[1:])[0])
    weights = gpo.weights(torch.tensor([3, 6]), 6)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2, 1))
    assert weights[0, 3:].abs().max() == 0


def test_gpo_pools_sorted_features_so_order_does_not_matter():
    torch.manual_seed(0)
    gpo, x = GPO(), torch.randn(1, 5, 4)
    mask = torch.ones(1, 5, dtype=torch.bool)
    torch.testing.assert_close(gpo(x, mask), gpo(x[:, torch.randperm(5)], mask))


# ------------------------------------------------------------------------------- image encoder
def test_embeddings_are_l2_normalised(small):
    with torch.no_grad():
        out = small(_images(3), [SHORT, LONG, "x"])
        dense = small.embed_texts([SHORT, LONG], decoder=False)
    for emb in (out["image"], out["text"], dense):
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(len(emb)))


def test_uint8_and_prenormalised_float_images_embed_the_same(small):
    images = _images(2)
    cfg = small.image.backbone.pretrained_cfg
    mean, std = (torch.tensor(cfg[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    with torch.no_grad():
        prenormalised = small.embed_images((images / 255 - mean) / std)
        torch.testing.assert_close(small.embed_images(images), prenormalised)


def test_image_encoder_runs_at_two_resolutions(small):
    with torch.no_grad():
        for size in (64, 96):
            emb = small.embed_images(_images(2, size))
            assert emb.shape == (2, small.config.embed_dim) and torch.isfinite(emb).all()


def _encoder(backbone: str, **kwargs) -> ImageEncoder:
    torch.manual_seed(0)
    cfg = ImageEncoderConfig(backbone=backbone, **kwargs)
    return ImageEncoder(create_image_backbone(cfg), cfg, 16).eval()


@pytest.mark.parametrize(("backbone", "layout"), [("test_resnet", "NCHW"), ("test_mambaout", "NHWC")])
def test_cnn_feature_maps_become_tokens(backbone, layout):
    encoder = _encoder(backbone)
    images = torch.randn(2, 3, 96, 96)  # a 3 x 3 map
    with torch.no_grad():
        fmap = encoder.backbone.forward_features(images)
        tokens = encoder.tokens(images)
        emb = encoder(images)
    fmap = fmap if layout == "NCHW" else fmap.permute(0, 3, 1, 2)  # (B, C, H, W)
    B, C, H, W = fmap.shape
    assert encoder.map_format == layout
    assert tokens.shape == (B, H * W, C)
    torch.testing.assert_close(tokens[:, W + 2], fmap[:, :, 1, 2])  # row-major over the map
    assert emb.shape == (2, 16) and torch.isfinite(emb).all()


def test_vit_class_token_is_left_out_of_pooling():
    encoder = _encoder("test_vit", pool="mean")
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        patches = encoder.tokens(images)[:, encoder.num_prefix_tokens :]
        expected = torch.nn.functional.normalize(encoder.proj(patches).mean(dim=1), dim=-1)
        torch.testing.assert_close(encoder(images), expected)
    assert encoder.num_prefix_tokens == 1


def test_pool_prefix_tokens_pools_the_class_token_with_the_patches():
    encoder = _encoder("test_vit", pool="mean", pool_prefix_tokens=True)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        every = encoder.tokens(images)  # class token included
        expected = torch.nn.functional.normalize(encoder.proj(every).mean(dim=1), dim=-1)
        torch.testing.assert_close(encoder(images), expected)


def test_cls_pooling_without_a_class_token_is_a_user_error():
    with pytest.raises(UserError, match="class token"):
        _encoder("test_resnet", pool="cls")


def test_patch_dropping_is_random_in_training_and_off_in_eval():
    encoder = _encoder("test_vit", drop_patches=0.5)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(encoder(images), encoder(images))
        encoder.train()
        assert not torch.allclose(encoder(images), encoder(images))
        mask = encoder._drop_mask(torch.ones(64, 49, dtype=torch.bool))
    assert mask.any(dim=1).all() and not mask.all()


def test_released_patch_dropping_spares_a_fifth_of_the_images_and_drops_at_most_a_fifth():
    encoder = _encoder("test_vit", drop_patches=0.2, drop_patches_prob=0.8)
    torch.manual_seed(0)
    kept = encoder._drop_mask(torch.ones(2000, 4000, dtype=torch.bool)).float().mean(dim=1)  # per image
    untouched = (kept == 1).float().mean().item()
    assert untouched == pytest.approx(0.2, abs=0.03)  # u <= 0.2: the image keeps every token
    assert kept.min().item() > 0.77  # rate 0.2 * u <= 0.2, binomial noise 0.006 per image
    dropped = 1 - kept[kept < 1]
    assert dropped.mean().item() == pytest.approx(0.2 * 0.6, abs=0.01)  # E[0.2 u | u > 0.2]


def test_image_weights_load_from_a_local_safetensors_folder_or_file(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("test_vit", pretrained=False)  # with its classifier, as published
    save_file(source.state_dict(), tmp_path / "model.safetensors")
    for where in (tmp_path, tmp_path / "model.safetensors"):
        loaded = create_image_backbone(ImageEncoderConfig(backbone="test_vit", pretrained=str(where)))
        torch.testing.assert_close(loaded.pos_embed, source.pos_embed)
        torch.testing.assert_close(loaded.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_missing_or_pickled_image_weights_are_user_errors(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(UserError, match="nope.safetensors"):
        create_image_backbone(ImageEncoderConfig(backbone="test_vit", pretrained=str(missing)))
    pickled = str(tmp_path / "weights.pth")
    (tmp_path / "weights.pth").write_bytes(b"\x80")
    with pytest.raises(UserError, match="pickle"):
        create_image_backbone(ImageEncoderConfig(backbone="test_vit", pretrained=pickled))


def test_unknown_timm_backbone_is_a_user_error_with_a_hint():
    with pytest.raises(UserError, match="test_vit"):
        create_image_backbone(ImageEncoderConfig(backbone="test_vitt"))


# -------------------------------------------------------------------------------- text encoder
def test_minilm_loads_offline_from_the_bundled_alias():
    model = _model(**{"model.text.pretrained": True, "model.text.config_overrides": {}})
    path = TEXT_BACKBONE_ALIASES["sentence-transformers/all-MiniLM-L6-v2"]()
    weights = load_file(f"{path}/model.safetensors")
    key = next(k for k in weights if k.endswith("embeddings.word_embeddings.weight"))
    torch.testing.assert_close(model.text.backbone.embeddings.word_embeddings.weight, weights[key])
    with torch.no_grad():
        emb = model.embed_texts([SHORT, LONG])
    assert emb.shape == (2, 128) and torch.isfinite(emb).all()


def test_unknown_text_backbone_says_it_must_be_local_or_an_alias():
    with pytest.raises(UserError, match="bundled alias.*all-MiniLM-L6-v2"):
        _model(**{"model.text.backbone": "/no/such/encoder"})


def test_misspelt_text_config_override_is_named():
    with pytest.raises(UserError, match="hiden_size.*hidden_size"):
        _model(**{"model.text.config_overrides": {"hiden_size": 64}})


def test_tokenize_gives_ids_and_mask_and_tokenized_input_embeds_like_strings(small):
    tokens = small.tokenize([SHORT, LONG])
    assert set(tokens) == {"input_ids", "attention_mask"}
    assert tokens["input_ids"].shape == tokens["attention_mask"].shape
    assert tokens["attention_mask"].dtype == torch.long
    with torch.no_grad():
        torch.testing.assert_close(small.embed_texts(tokens), small.embed_texts([SHORT, LONG]))


# ------------------------------------------------------------------------------------ training
def test_every_parameter_gets_a_gradient_with_the_decoder(small):
    model = _model()
    model.train()
    out = model(_images(4), [SHORT, LONG, "x", "y z"])
    (out["image"] @ out["text"].T).sum().backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []


def test_param_groups_put_backbones_at_lr_mult_and_spare_norms_biases_tokens_from_decay():
    model = _model(**{"model.image.backbone": "test_vit", "model.image.backbone_args": {},
                      "model.image.lr_mult": 0.1, "model.text.lr_mult": 0.2})
    optim = OptimConfig(lr=1e-3, weight_decay=0.05)
    groups = model.param_groups(optim)
    group_of = {id(p): g for g in groups for p in g["params"]}
    assert len(group_of) == sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    for g in groups:
        assert math.isclose(g["lr"], optim.lr * g["lr_mult"])
    for p in model.image.backbone.parameters():
        assert group_of[id(p)]["lr_mult"] == 0.1
    for p in model.text.backbone.parameters():
        assert group_of[id(p)]["lr_mult"] == 0.2
    assert group_of[id(model.decoder.tokens)]["lr_mult"] == 1.0
    no_decay = [
        model.image.proj.bias,
        model.text.norm.weight,
        model.decoder.tokens,
        model.decoder.blocks[0].norm1.weight,
        model.image.backbone.pos_embed,
        *model.text.pool.parameters(),
    ]
    assert all(group_of[id(p)]["weight_decay"] == 0.0 for p in no_decay)
    decay = [
        model.image.proj.weight,
        model.decoder.blocks[0].attn.qkv.weight,
        model.image.backbone.blocks[0].mlp.fc1.weight,
    ]
    assert all(group_of[id(p)]["weight_decay"] == 0.05 for p in decay)
    overridden = model.param_groups(optim, image_lr_mult=0.5)
    assert {g["lr_mult"] for g in overridden} == {0.5, 0.2, 1.0}


def test_decay_all_puts_weight_decay_on_every_parameter():
    model = _model()
    groups = model.param_groups(OptimConfig(weight_decay=0.05, decay_all=True))
    assert {g["weight_decay"] for g in groups} == {0.05}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_a_dense_caption_of_180_tokens_reaches_the_encoder_whole(small):
    dense = " ".join(["red"] * 178)  # 178 words + [CLS] + [SEP] = 180 tokens
    assert small.tokenize([dense], dense=True)["input_ids"].shape[1] == 180
    assert small.tokenize([dense])["input_ids"].shape[1] == small.text.max_length  # sparse limit


def test_lengths_beyond_the_backbones_positions_are_a_user_error():
    with pytest.raises(UserError, match="dense_max_length=1024.*512 positions"):
        _model(**{"model.text.dense_max_length": 1024})


def test_build_model_takes_the_whole_config_or_its_model_section():
    config = resolve(overrides={"model.decoder.depth": 1})
    assert isinstance(config.model, ModelConfig)
    for given in (config, config.model):
        assert len(build_model(given).decoder.blocks) == 1
    from core import build_model as exported

    assert exported is build_model
