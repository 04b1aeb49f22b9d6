"""Training-time data: ``PairDataset`` (image-caption pairs of a split) and ``Collator`` (batches).

Randomness is a function of ``(seed, epoch, index)``: each item draws from its own generator, so
a resumed epoch sees the same augmentations and the number of DataLoader workers changes nothing.
A train item carries ``seed``, the seed of its text augmentation, which the Collator applies per
item (so a caption's augmentation does not depend on its batch either); eval items carry none and
are not augmented.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
import torch

from core.config import DataConfig, TextAugmentConfig
from core.data.augment import TokenAugment, eval_view, swap_left_right, train_view
from core.data.cache import ImageStore, Split
from core.errors import UserError

__all__ = ["PairDataset", "Collator", "eval_images"]

TEXTS = ("sparse", "dense")


class PairDataset(torch.utils.data.Dataset):
    """Image-text pairs of one split.

    ``text="sparse"`` (fine-tuning, evaluation): one item per sparse caption, with its image and
    the image's dense caption when the split has them. ``text="dense"`` (pre-training): one item
    per image, with its dense caption. Items: ``{"image": uint8 (3, H, W), "caption": str,
    "image_index": int}`` plus ``"dense": str`` when the split has dense captions, plus ``"seed":
    int`` when ``train``.

    Args:
        split: the split to draw from.
        data_cfg: the data section (image size, crop scale, flip).
        text: which captions to iterate.
        train: random crop, flip (swapping left/right words) and text augmentation seeds; else the
            evaluation view.
        seed: with the epoch and the item index, decides every random choice.
    """

    def __init__(self, split: Split, data_cfg: DataConfig, text: Literal["sparse", "dense"] = "sparse", train: bool = True, seed: int = 0):
        if text not in TEXTS:
            raise UserError(f"text={text!r}: expected one of {', '.join(TEXTS)}")
        if text == "dense" and split.dense is None:
            raise UserError(f"split '{split.name}' has no dense captions (set data.dense_captions to a JSONL file)")
        self.split = split
        self.data_cfg = data_cfg
        self.text = text
        self.train = train
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentations ``__getitem__`` returns."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.split.captions) if self.text == "sparse" else len(self.split.images)

    def __getitem__(self, index: int) -> dict:
        split, cfg = self.split, self.data_cfg
        if self.text == "sparse":
            image_index, caption = int(split.caption_image[index]), split.captions[index]
        else:
            image_index, caption = index, split.dense[index]
        dense = split.dense[image_index] if split.dense is not None else None
        image = split.images[image_index]
        item = {"image_index": image_index}
        if self.train:
            rng = np.random.default_rng([self.seed % 2**64, self.epoch, index])
            item["image"], flipped = train_view(image, cfg.image_size, cfg.crop_scale, cfg.hflip, rng)
            if flipped:  # keep the captions true of the mirrored image
                caption = swap_left_right(caption)
                dense = swap_left_right(dense) if dense is not None else None
            item["seed"] = int(rng.integers(2**63))
        else:
            item["image"] = eval_view(image, cfg.image_size)
        item["caption"] = caption
        if dense is not None:
            item["dense"] = dense
        return item


class Collator:
    """Stacks items into a batch and tokenizes (and augments) their captions.

    Batch: ``{"image": uint8 (B, 3, H, W), "text": {"input_ids", "attention_mask"} (B, L) long,
    "dense": the same for dense captions (when every item has one), "image_index": (B,) long,
    "strings": {"text": [...], "dense": [...]}}``, token ids padded to the longest caption in the
    batch, truncated to ``max_length`` (``dense_max_length`` for dense captions) tokens; the
    strings are the captions before token augmentation (for teachers with their own tokenizer).

    Args:
        tokenizer: the text backbone's Hugging Face tokenizer.
        max_length: tokens per ``caption``, special tokens included.
        text_augment: token augmentation for items that carry a ``seed`` (train items); None or
            ``enabled: false`` turns it off.
        dense_max_length: tokens per ``dense`` caption; default ``max_length``.
    """

    def __init__(
        self, tokenizer, max_length: int, text_augment: TextAugmentConfig | None = None, dense_max_length: int | None = None
    ):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.dense_max_length = dense_max_length or max_length
        enabled = text_augment is not None and text_augment.enabled and text_augment.prob > 0
        self.augment = TokenAugment(text_augment, tokenizer) if enabled else None

    def __call__(self, items: Sequence[dict]) -> dict:
        seeds = [item.get("seed") for item in items]
        captions = [item["caption"] for item in items]
        batch = {
            "image": torch.stack([item["image"] for item in items]),
            "text": self.tokenize(captions, seeds, stream=0),
            "image_index": torch.tensor([item["image_index"] for item in items], dtype=torch.long),
            "strings": {"text": captions},
        }
        if all("dense" in item for item in items):
            dense = [item["dense"] for item in items]
            batch["dense"] = self.tokenize(dense, seeds, stream=1, max_length=self.dense_max_length)
            batch["strings"]["dense"] = dense
        return batch

    def tokenize(
        self, texts: list[str], seeds: Iterable[int | None] | None = None, stream: int = 0, max_length: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Tokenize, augment each text whose seed is not None, pad to the longest.

        Args:
            texts: the captions.
            seeds: one augmentation seed (or None) per text; None: no augmentation.
            stream: separates the generators of captions tokenized from the same item.
            max_length: truncation length; default the ``max_length`` of sparse captions.
        """
        ids = self.tokenizer(list(texts), truncation=True, max_length=max_length or self.max_length)["input_ids"]
        if self.augment is not None and seeds is not None:
            ids = [self.augment(seq, np.random.default_rng([seed, stream])) if seed is not None else seq for seq, seed in zip(ids, seeds)]
        length = max(len(seq) for seq in ids)
        input_ids = torch.full((len(ids), length), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), length), dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, : len(seq)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}


def eval_images(images: ImageStore, indices: Iterable[int], image_size: int) -> torch.Tensor:
    """The evaluation views of some images of a split, stacked: uint8 ``(B, 3, image_size, image_size)``.

    Args:
        images: the split's image store.
        indices: which images, in order.
        image_size: output side (``data.image_size``).
    """
    return torch.stack([eval_view(images[i], image_size) for i in indices])
