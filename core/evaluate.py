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
from core.runtime import world

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
    """Embed every image and every sparse caption of ``split`` once: ``(N, D)`` and ``(M, D)``.

    Under torch.distributed each process embeds a contiguous share of whole ``eval.batch_size``
    batches of the images and of the captions (every batch the one-process batch: an unmasked
    decoder's embeddings depend on their batch), and every process gets the whole gathered
    matrices (rows in split order)."""
    model.eval()
    batch = config.eval.batch_size
    rank, world_size = world()
    mine = [_share(len(split.images), rank, world_size, batch), _share(len(split.captions), rank, world_size, batch)]
    images = [
        model.embed_images(eval_images(split.images, range(i, min(i + batch, mine[0].stop)), config.data.image_size).to(device))
        for i in range(mine[0].start, mine[0].stop, batch)
    ]
    texts = [model.embed_texts(split.captions[i : min(i + batch, mine[1].stop)]) for i in range(mine[1].start, mine[1].stop, batch)]
    dim = model.config.embed_dim
    image_emb = torch.cat(images).float() if images else torch.empty(0, dim, device=device)
    text_emb = torch.cat(texts).float() if texts else torch.empty(0, dim, device=device)
    if world_size == 1:
        return image_emb, text_emb
    return _gather_rows(image_emb, len(split.images), batch), _gather_rows(text_emb, len(split.captions), batch)


def _share(n: int, rank: int, world_size: int, block: int) -> range:
    """Rank ``rank``'s contiguous share of ``n`` rows in whole blocks of ``block`` rows (the first
    ranks take one block more; the last block may be short)."""
    blocks = -(-n // block)
    size, extra = divmod(blocks, world_size)
    first = rank * size + min(rank, extra)
    return range(min(n, first * block), min(n, (first + size + (rank < extra)) * block))


def _gather_rows(local: torch.Tensor, n: int, block: int) -> torch.Tensor:
    """Every rank's share (:func:`_share`), in rank order: the ``(n, D)`` matrix on every process."""
    import torch.distributed as dist

    _, world_size = world()
    sizes = [len(_share(n, r, world_size, block)) for r in range(world_size)]
    padded = torch.zeros(max(sizes), local.shape[1], dtype=local.dtype, device=local.device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)  # all_gather needs one shape: the shares are padded to the longest
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


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
