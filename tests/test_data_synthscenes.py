"""SynthScenes: determinism, truthful captions, rendering where the scene graph says, the card."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.config import DataConfig, SynthScenesConfig
from core.data import build_splits
from core.data.synthscenes import (
    COLOURS,
    Obj,
    Scene,
    caption_is_true,
    dense_caption,
    make_record,
    records,
    render,
)
from core.data.synthscenes.card import card
from core.errors import UserError


def small(seed: int = 0, **synth) -> DataConfig:
    cfg = {"num_train": 12, "num_val": 4, "num_test": 6, "image_size": 32, **synth}
    return DataConfig(image_size=32, synthscenes=SynthScenesConfig(seed=seed, **cfg))


def cache_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_cache_files(tmp_path):
    build_splits(small(seed=3), tmp_path / "a")
    build_splits(small(seed=3), tmp_path / "b")
    a, b = cache_files(tmp_path / "a"), cache_files(tmp_path / "b")
    assert a.keys() == b.keys()
    assert {"images.u8", "index.json", "captions.jsonl", "dense.jsonl"} <= {Path(k).name for k in a}
    assert a == b


def test_different_seed_gives_different_scenes_and_files(tmp_path):
    one = build_splits(small(seed=1), tmp_path)
    two = build_splits(small(seed=2), tmp_path)
    assert one["train"].fingerprint != two["train"].fingerprint
    assert one["train"].captions != two["train"].captions
    assert not np.array_equal(one["train"].images[0], two["train"].images[0])


def test_splits_have_configured_sizes_and_caption_mapping(tmp_path):
    splits = build_splits(small(captions_per_image=3), tmp_path)
    assert list(splits) == ["train", "val", "test"]
    for name, count in (("train", 12), ("val", 4), ("test", 6)):
        split = splits[name]
        assert len(split.images) == count == len(split.dense) == len(split.image_ids)
        assert len(split.captions) == 3 * count
        assert np.array_equal(split.caption_image, np.repeat(np.arange(count), 3))
        assert split.images[0].shape == (37, 37, 3) and split.images[0].dtype == np.uint8  # ceil(32 * 1.15)


def test_test_split_does_not_depend_on_train_size():
    a = records(SynthScenesConfig(num_train=5, num_test=3), "test")
    b = records(SynthScenesConfig(num_train=50, num_test=3), "test")
    assert a == b


def test_sparse_captions_are_true_of_their_scene_and_distinct():
    cfg = SynthScenesConfig(num_train=200, min_objects=1, max_objects=6)
    for rec in records(cfg, "train"):
        assert len(set(rec.captions)) == len(rec.captions) == cfg.captions_per_image
        assert all(caption_is_true(m, rec.scene) for m in rec.meanings)
        assert all(1 <= len(c.split()) <= 16 for c in rec.captions)


def test_caption_truth_rejects_what_the_scene_does_not_show():
    red = Obj("circle", "red", "large", row=0, col=0)
    blue = Obj("square", "blue", "small", row=2, col=2)
    scene = Scene("gray", (red, blue))
    circle, square = {"shape": "circle", "colour": "red"}, {"shape": "square", "colour": "blue"}
    assert caption_is_true({"kind": "relation", "rel": "left_of", "a": circle, "b": square}, scene)
    assert caption_is_true({"kind": "relation", "rel": "above", "a": circle, "b": square}, scene)
    assert not caption_is_true({"kind": "relation", "rel": "right_of", "a": circle, "b": square}, scene)
    assert not caption_is_true({"kind": "relation", "rel": "left_of", "a": circle, "b": circle}, scene)
    assert not caption_is_true({"kind": "object", "a": {"shape": "circle", "colour": "blue"}}, scene)
    assert not caption_is_true({"kind": "object", "a": {"shape": "circle", "col": 2}}, scene)
    assert not caption_is_true({"kind": "pair", "a": circle, "b": circle}, scene)
    assert caption_is_true({"kind": "count", "n": 2, "background": "gray", "a": square}, scene)
    assert not caption_is_true({"kind": "count", "n": 2, "background": "brown", "a": square}, scene)
    assert not caption_is_true({"kind": "count", "n": 3, "background": "gray", "a": square}, scene)
    assert not caption_is_true({"kind": "count", "n": 2, "background": "gray", "a": {"shape": "star"}}, scene)


def test_dense_caption_mentions_every_object_with_its_attributes():
    cfg = SynthScenesConfig(num_train=100, max_objects=6)
    for rec in records(cfg, "train"):
        assert len(rec.dense.split()) >= 10
        for obj in rec.scene.objects:
            assert f"{obj.size} {obj.colour} {obj.shape} in the" in rec.dense
        assert rec.scene.background in rec.dense


def test_dense_caption_states_relations_between_neighbours():
    scene = Scene("gray", (Obj("star", "green", "large", 0, 2), Obj("cross", "black", "small", 1, 0)))
    text = dense_caption(scene)
    assert "the green star is right of and above the black cross." in text
    assert "in the top right" in text and "in the middle left" in text


def test_objects_are_drawn_in_their_grid_cells():
    scene = Scene("gray", (Obj("square", "red", "large", row=0, col=0), Obj("circle", "blue", "large", row=2, col=2)))
    image = render(scene, 48, np.random.default_rng(0)).astype(int)
    def share(colour, rows, cols):
        region = image[rows, cols]
        return (np.abs(region - np.array(COLOURS[colour])).sum(-1) < 80).mean()
    third, rest = slice(0, 16), slice(16, 48)
    assert share("red", third, third) > 0.3
    assert share("red", rest, slice(0, 48)) == 0 and share("red", slice(0, 48), rest) == 0
    assert share("blue", slice(32, 48), slice(32, 48)) > 0.3
    assert share("blue", slice(0, 32), slice(0, 48)) == 0


def test_records_are_reproducible_from_seed_split_and_index():
    cfg = SynthScenesConfig(seed=7)
    assert make_record(cfg, "val", 5) == make_record(cfg, "val", 5)
    assert make_record(cfg, "val", 5) != make_record(cfg, "test", 5)


def test_more_objects_than_grid_cells_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="at most 9"):
        build_splits(small(max_objects=10), tmp_path)


def test_card_counts_ambiguity_on_scene_graphs_and_chance(tmp_path):
    data = small(num_test=20)
    result = card(data, tmp_path)
    assert result["images"] == {"train": 12, "val": 4, "test": 20}
    assert result["sparse_captions"]["test"] == 100
    amb = result["test_ambiguity"]
    recs = records(data.synthscenes, "test")
    scenes = [r.scene for r in recs]
    several = sum(sum(caption_is_true(m, s) for s in scenes) > 1 for r in recs for m in r.meanings)
    assert amb["true_of_several_images"] == several > 0  # "a red circle" style captions repeat
    assert amb["images_per_caption"]["min"] == 1
    ceiling = amb["t2i_ceiling"]
    assert 0 < ceiling["t2i_r1"] < ceiling["t2i_r5"] <= ceiling["t2i_r10"] <= 100
    assert result["chance_recall"]["t2i_r1"] == 5.0  # 1 / 20 images
    # i2t chance: at least one of 5 captions among the top 1 of 100
    assert result["chance_recall"]["i2t_r1"] == 5.0
    assert result["vocabulary"]["all"] >= result["vocabulary"]["sparse"] > 20
    assert result["words_per_caption"]["dense"]["mean"] > result["words_per_caption"]["sparse"]["mean"]


def test_card_shows_a_dense_caption_identifies_its_image_far_better_than_a_sparse_one(tmp_path):
    result = card(small(num_test=60), tmp_path)["test_ambiguity"]
    dense, sparse = result["dense_t2i_ceiling"], result["t2i_ceiling"]
    assert dense["t2i_r1"] > 95 and dense["t2i_r1"] > sparse["t2i_r1"] + 20
    assert result["images_per_dense_caption"]["mean"] < result["images_per_caption"]["mean"]
