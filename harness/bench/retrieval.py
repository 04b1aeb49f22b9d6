"""Benchmark of the retrieval metrics: ``core.metrics`` against the per-query loop reference.

Both run the full evaluation protocol (both directions on the whole matrix, and the mean over
folds of consecutive images, every metric) on one random similarity matrix, in this process,
and must give identical metrics. The peak extra memory of the fast path is measured on the
device it runs on:

- CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated before the call.
- CPU: peak resident-set growth of a child process that rebuilds the same matrix and runs the
  fast path once. The child resets its high-water mark (``/proc/self/clear_refs``) right before
  the call and reads ``VmHWM`` after it. It runs with glibc's mmap threshold pinned to 128 KiB,
  so every buffer above that size is mapped on allocation and unmapped on free: no freed memory
  stays resident to be reused unseen, and the growth is the peak of the live buffers. Linux only.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from core.errors import UserError
from core.metrics import kfold_recall, retrieval_recall
from harness.bench.reference import reference_kfold_recall, reference_recall

__all__ = ["bench_retrieval"]

_PROJECT_ROOT = Path(__file__).resolve().parents[2]
_MMAP_THRESHOLD = str(128 * 1024)  # glibc's default, pinned (a set value disables its dynamic growth)


def bench_retrieval(
    n_images: int = 5000,
    captions_per_image: int = 5,
    dim: int = 512,
    device: str = "cpu",
    seed: int = 0,
    n_folds: int = 5,
    repeats: int = 3,
) -> dict:
    """Time the full retrieval protocol with ``core.metrics`` and with the loop reference.

    The defaults are the COCO 5K test protocol: 5,000 images x 25,000 captions, 512-d, 5 folds of
    1,000 images. Embeddings are random unit vectors, each caption a noisy copy of its image.

    Args:
        n_images: images; a multiple of ``n_folds``.
        captions_per_image: captions per image.
        dim: embedding size.
        device: where the similarity matrix and the fast path live (``cpu``, ``cuda``, ``cuda:N``);
            the reference always runs in numpy on the CPU.
        seed: seed of the random embeddings.
        n_folds: folds of consecutive images for the k-fold metrics.
        repeats: runs of the fast path; ``fast_s`` is the fastest (the reference runs once).

    Returns:
        ``fast_s`` and ``reference_s`` (wall seconds of the whole protocol), ``speedup``,
        ``peak_extra_mb`` (MiB beyond the similarity matrix; ``None`` where it cannot be
        measured), ``memory_method``, ``metrics_equal`` (every metric of both paths identical),
        ``metrics`` (``full`` and ``folds`` of the fast path) and the sizes: ``n_images``,
        ``n_texts``, ``dim``, ``device``, ``sims_mb``, ``cpu_threads``.
    """
    if n_images < n_folds or n_images % n_folds:
        raise UserError(f"bench_retrieval: n_images={n_images} does not split into n_folds={n_folds} folds")
    fold_size = n_images // n_folds
    sims, txt2img = _random_inputs(n_images, captions_per_image, dim, torch.device(device), seed)

    fast, fast_s = _best_time(lambda: _fast_protocol(sims, txt2img, fold_size), sims.device, repeats)
    sims_np, txt2img_np = sims.cpu().numpy(), txt2img.cpu().numpy()
    reference, reference_s = _best_time(
        lambda: _reference_protocol(sims_np, txt2img_np, fold_size), torch.device("cpu"), repeats=1
    )
    peak_extra_mb, memory_method = _peak_extra_mb(sims, txt2img, fold_size, seed, captions_per_image, dim)
    return {
        "n_images": n_images,
        "n_texts": sims.shape[1],
        "dim": dim,
        "device": str(sims.device),
        "cpu_threads": torch.get_num_threads(),
        "sims_mb": sims.numel() * sims.element_size() / 2**20,
        "fast_s": fast_s,
        "reference_s": reference_s,
        "speedup": reference_s / fast_s,
        "peak_extra_mb": peak_extra_mb,
        "memory_method": memory_method,
        "metrics_equal": fast == reference,
        "metrics": fast,
    }


def _random_inputs(
    n_images: int, captions_per_image: int, dim: int, device: torch.device, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sims (N, N * captions_per_image)`` float32 on ``device`` and ``txt2img``; the same for a seed anywhere."""
    g = torch.Generator().manual_seed(seed)
    txt2img = torch.arange(n_images).repeat_interleave(captions_per_image)  # (T,)
    images = torch.randn(n_images, dim, generator=g)  # (N, D)
    # Noise of sqrt(dim)/4 puts a caption's cosine with its image about 4 standard deviations above
    # a random pair's, so recalls sit between 0 and 100 and the equality check is not vacuous.
    texts = images[txt2img] + math.sqrt(dim) / 4 * torch.randn(len(txt2img), dim, generator=g)  # (T, D)
    images, texts = (torch.nn.functional.normalize(x, dim=1).to(device) for x in (images, texts))
    return images @ texts.T, txt2img.to(device)  # (N, T), (T,)


def _fast_protocol(sims: torch.Tensor, txt2img: torch.Tensor, fold_size: int) -> dict[str, dict[str, float]]:
    return {"full": retrieval_recall(sims, txt2img), "folds": kfold_recall(sims, txt2img, fold_size)}


def _reference_protocol(sims, txt2img, fold_size: int) -> dict[str, dict[str, float]]:
    return {"full": reference_recall(sims, txt2img), "folds": reference_kfold_recall(sims, txt2img, fold_size)}


def _best_time(fn: Callable[[], dict], device: torch.device, repeats: int) -> tuple[dict, float]:
    """Result of ``fn`` and its fastest wall time over ``repeats`` runs (synchronised on CUDA)."""
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        result = fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return result, min(times)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_extra_mb(
    sims: torch.Tensor, txt2img: torch.Tensor, fold_size: int, seed: int, captions_per_image: int, dim: int
) -> tuple[float | None, str]:
    if sims.device.type == "cuda":
        torch.cuda.synchronize(sims.device)
        torch.cuda.reset_peak_memory_stats(sims.device)
        before = torch.cuda.memory_allocated(sims.device)
        _fast_protocol(sims, txt2img, fold_size)
        return (torch.cuda.max_memory_allocated(sims.device) - before) / 2**20, "torch.cuda.max_memory_allocated"
    if not Path("/proc/self/clear_refs").exists():
        return None, "unavailable: needs Linux /proc/self/clear_refs"
    args = json.dumps([sims.shape[0], captions_per_image, dim, seed, fold_size])
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": _MMAP_THRESHOLD}
    command = [sys.executable, "-m", "harness.bench._peak_rss", args]
    child = subprocess.run(command, cwd=_PROJECT_ROOT, env=env, capture_output=True, text=True)
    if child.returncode:
        raise RuntimeError(f"bench_retrieval: the memory-measuring child process failed:\n{child.stderr}")
    return float(child.stdout.strip().splitlines()[-1]), "child-process VmHWM growth, glibc mmap threshold pinned"
