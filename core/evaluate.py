"""One evaluation function for validation and test: embed once, rank once, derive every metric.

Each image is encoded once (the released code encodes each image once per caption) and each
caption once; the similarity matrix is ranked by ``core.metrics``. The per-query ranks are kept:
they are the artifact behind paired significance tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.config import Config
from core.data import Split, eval_images
from core.metrics import kfold, metrics_from_ranks, retrieval_ranks
from core.model import D2SVSE

__all__ = ["EvalResult", "embed_split", "evaluate"]


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, float]  # the whole split (COCO: 5K)
    fold_metrics: dict[str, float] | None  # mean over folds of eval.fold_size images (COCO: 1K)
    i2t_ranks: np.ndarray  # (n_images,) 0-based rank of the best ground-truth caption
    t2i_ranks: np.ndarray  # (n_texts,) 0-based rank of the caption's image
    fold_ranks: tuple[np.ndarray, np.ndarray] | None = None  # the same ranks within each fold


@torch.no_grad()
def embed_split(model: D2SVSE, split: Split, config: Config, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed every image and every sparse caption of ``split`` once: ``(N, D)`` and ``(M, D)``."""
    model.eval()
    batch = config.eval.batch_size
    images = [
        model.embed_images(eval_images(split.images, range(i, min(i + batch, len(split.images))), config.data.image_size).to(device))
        for i in range(0, len(split.images), batch)
    ]
    texts = [model.embed_texts(split.captions[i : i + batch]) for i in range(0, len(split.captions), batch)]
    return torch.cat(images).float(), torch.cat(texts).float()


def evaluate(model: D2SVSE, split: Split, config: Config, device: torch.device | str = "cpu") -> EvalResult:
    """Retrieval metrics of ``model`` on ``split`` (sparse captions).

    Args:
        model: the model; evaluated in eval mode (restored to its previous mode after).
        split: a data split (``val`` for selection, ``test`` once at the selected checkpoint).
        config: reads ``eval`` (batch size, fold size) and ``data.image_size``.
        device: where embedding and ranking run.
    """
    was_training = model.training
    image_emb, text_emb = embed_split(model, split, config, torch.device(device))
    model.train(was_training)
    sims = image_emb @ text_emb.T  # (N, M) cosine similarities
    txt2img = torch.as_tensor(split.caption_image, device=sims.device)
    i2t, t2i = retrieval_ranks(sims, txt2img)
    folds = fold_ranks = None
    if config.eval.fold_size is not None and config.eval.fold_size < len(split.images):
        folds, *ranks = kfold(sims, txt2img, config.eval.fold_size)
        fold_ranks = tuple(r.cpu().numpy() for r in ranks)
    return EvalResult(metrics_from_ranks(i2t, t2i), folds, i2t.cpu().numpy(), t2i.cpu().numpy(), fold_ranks)
