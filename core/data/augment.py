"""Train-time augmentation: image views on uint8 tensors, left/right word swaps, token edits.

Images stay uint8 (the model normalises on its device). The cached square holds the whole image
(``core.data.cache``). A train view is a random square crop whose side is a share
``u ~ U(crop_scale)`` of the cached side, at a random place, resized to ``image_size`` and flipped
horizontally with probability 1/2 when ``data.hflip``: the released code's crop of the same share
of both sides of the whole image. The evaluation view is the whole cached square resized to
``image_size`` (what a crop of share 1 gives). A flipped image's captions get
left and right swapped so they stay true (for real captions this also turns "the right answer"
into "the left answer": rare, and the flip is what the released code does without any swap).

Text augmentation follows the released code's rule on token ids rather than words: each
non-special token is touched with probability ``prob``; a touched token becomes ``[MASK]`` with
probability ``mask``, a random non-special token with probability ``random``, and is deleted
otherwise. Special tokens ([CLS], [SEP], [PAD], ...) are never touched.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from core.config import TextAugmentConfig
from core.errors import UserError

__all__ = ["train_view", "eval_view", "swap_left_right", "TokenAugment"]

_LEFT_RIGHT = re.compile(r"\b(left|right)(most|ward|wards)?\b", re.IGNORECASE)
_SWAP = {"left": "right", "right": "left"}


def _to_chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # (3, S, S)


def train_view(
    image: np.ndarray, size: int, crop_scale: tuple[float, float], hflip: bool, rng: np.random.Generator
) -> tuple[torch.Tensor, bool]:
    """A random resized square crop (and maybe a horizontal flip) of a cached image.

    Args:
        image: uint8 ``(S, S, 3)``.
        size: output side (``data.image_size``).
        crop_scale: range of the crop's side as a share of the image's side.
        hflip: whether to flip with probability 1/2.
        rng: the item's generator.
    Returns:
        uint8 ``(3, size, size)`` and whether it was flipped.
    """
    side = image.shape[0]
    crop = min(side, max(1, round(side * rng.uniform(*crop_scale))))
    top, left = (int(v) for v in rng.integers(0, side - crop + 1, size=2))
    flipped = bool(rng.random() < 0.5) and hflip  # always drawn: the stream does not depend on hflip
    view = TF.resized_crop(_to_chw(image), top, left, crop, crop, [size, size], antialias=True)
    return (view.flip(-1) if flipped else view), flipped


def eval_view(image: np.ndarray, size: int) -> torch.Tensor:
    """The whole cached image resized to ``size``: uint8 ``(3, size, size)``."""
    view = _to_chw(image)
    return view if image.shape[0] == size else TF.resize(view, [size, size], antialias=True)


def _swap_case(match: re.Match) -> str:
    word, suffix = match.group(1), match.group(2) or ""
    swapped = _SWAP[word.lower()]
    if word.isupper():
        swapped = swapped.upper()
    elif word[0].isupper():
        swapped = swapped.capitalize()
    return swapped + suffix


def swap_left_right(text: str) -> str:
    """Swap the words left and right (also leftmost/rightward...), keeping their case."""
    return _LEFT_RIGHT.sub(_swap_case, text)


class TokenAugment:
    """Mask / replace / delete tokens of one tokenized caption (see the module docstring).

    Args:
        config: shares of tokens touched, masked, replaced.
        tokenizer: a Hugging Face tokenizer (special ids, mask id, vocabulary size).
    """

    def __init__(self, config: TextAugmentConfig, tokenizer):
        self.config = config
        self.special = np.array(sorted(tokenizer.all_special_ids), dtype=np.int64)
        self.mask_id = tokenizer.mask_token_id
        if self.mask_id is None and config.mask > 0:
            raise UserError("data.text_augment.mask > 0 but the tokenizer has no mask token; set it to 0")
        self.replacements = np.setdiff1d(np.arange(len(tokenizer), dtype=np.int64), self.special)

    def __call__(self, ids: list[int], rng: np.random.Generator) -> list[int]:
        """Augment one sequence of token ids (special tokens included, and kept)."""
        tokens = np.asarray(ids, dtype=np.int64)
        touched = (rng.random(len(tokens)) < self.config.prob) & ~np.isin(tokens, self.special)
        action = rng.random(len(tokens))  # < mask: [MASK]; < mask + random: random token; else delete
        masked = touched & (action < self.config.mask)
        replaced = touched & ~masked & (action < self.config.mask + self.config.random)
        deleted = touched & ~masked & ~replaced
        if masked.any():  # never without a mask token: the constructor checked mask == 0
            tokens[masked] = self.mask_id
        tokens[replaced] = self.replacements[rng.integers(len(self.replacements), size=int(replaced.sum()))]
        return tokens[~deleted].tolist()
