"""Benchmark of the retrieval metrics: ``core.metrics`` against the per-query loop reference.

Two protocols on one random similarity matrix, each timed with both paths in this process, and
each path's metrics compared for equality:

- ``5K``: both directions on the whole matrix (COCO 5K test: 5,000 images x 25,000 captions).
- ``1K``: the mean over folds of consecutive images (COCO 5-fold 1K: folds of 1,000 images).

Then the peak extra memory of the fast path (beyond the similarity matrix), on the 5K matrix and
on a 25K x 125K one (11.6 GiB of float32 scores, ranked in row chunks of about 1M scores), on the
device the fast path runs on:

- CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated before the call.
- CPU: peak resident-set growth of a child process that builds the matrix and runs the fast path
  (``harness.bench._peak_rss``). The child resets its high-water mark (``/proc/self/clear_refs``)
  right before the call and reads ``VmHWM`` after it. It runs with glibc's mmap threshold pinned
  to 128 KiB, so every buffer above that size is mapped on allocation and unmapped on free: no
  freed memory stays resident to be reused unseen, and the growth is the peak of the live
  buffers. Linux only. The large matrix lives only in the child (the parent never builds it), and
  is not built at all when the machine lacks the memory for it (the check then says so).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from core.errors import UserError
from core.metrics import kfold_recall, retrieval_recall
from harness.bench._proc import proc_kib
from harness.bench.measure import EARLIER, Figure, check, figures_json, ratio_check, timed
from harness.bench.reference import reference_kfold_recall, reference_recall

__all__ = ["bench_retrieval"]

_PROJECT_ROOT = Path(__file__).resolve().parents[2]
_MMAP_THRESHOLD = str(128 * 1024)  # glibc's default, pinned (a set value disables its dynamic growth)
SPEEDUP_TARGET = 10.0  # the fast path at least 10x the per-query loop
EXTRA_MIB_TARGET = 2048.0  # "well under 2 GB" beyond the similarity matrix
_MEMORY_HEADROOM = 1.25  # the large case runs only when this much more than its matrix is free


def bench_retrieval(
    n_images: int = 5000,
    captions_per_image: int = 5,
    dim: int = 512,
    device: str = "cpu",
    seed: int = 0,
    n_folds: int = 5,
    repeats: int = 5,
    reference_repeats: int = 1,  # the slow side (25 s at 5K on 2 cores): its spread moves no ratio much
    large_images: int = 25000,
    large_repeats: int = 1,
) -> dict[str, Any]:
    """Time both protocols with ``core.metrics`` and with the loop reference; measure memory.

    Embeddings are random unit vectors, each caption a noisy copy of its image.

    Args:
        n_images: images of the timed matrix; a multiple of ``n_folds``.
        captions_per_image: captions per image (both matrices).
        dim: embedding size.
        device: where the similarity matrices and the fast path live (``cpu``, ``cuda``,
            ``cuda:N``); the reference always runs in numpy on the CPU.
        seed: seed of the random embeddings.
        n_folds: folds of consecutive images for the 1K protocol.
        repeats: runs of the fast path per protocol.
        reference_repeats: runs of the loop reference per protocol.
        large_images: images of the memory-only matrix (``large_images x large_images *
            captions_per_image``); 0 skips it.
        large_repeats: runs of the fast path on it.

    Returns:
        ``figures`` (seconds of each path and protocol, MiB of extra memory), ``checks``
        (speed-ups, metric equality, memory), ``metrics`` (of the fast path, by protocol), the
        ``large`` case's record and the sizes.
    """
    if n_images < n_folds or n_images % n_folds:
        raise UserError(f"bench_retrieval: n_images={n_images} does not split into n_folds={n_folds} folds")
    fold_size = n_images // n_folds
    sims, txt2img = _random_inputs(n_images, captions_per_image, dim, torch.device(device), seed)
    sims_np, txt2img_np = sims.cpu().numpy(), txt2img.cpu().numpy()
    sync = _synchronizer(sims.device)
    full, folds = _k(n_images), f"{n_folds}-fold {_k(fold_size)}"  # "5K", "5-fold 1K"
    protocols = {
        full: (lambda: retrieval_recall(sims, txt2img), lambda: reference_recall(sims_np, txt2img_np)),
        folds: (
            lambda: kfold_recall(sims, txt2img, fold_size),
            lambda: reference_kfold_recall(sims_np, txt2img_np, fold_size),
        ),
    }
    figures: dict[str, Figure] = {}
    checks, metrics = [], {}
    for name, (fast, reference) in protocols.items():
        metrics[name], figures[f"{name} core.metrics"] = timed(fast, repeats, sync)
        expected, figures[f"{name} loop reference"] = timed(reference, reference_repeats)
        checks.append(
            ratio_check(
                f"{name} speed-up: loop reference / core.metrics",
                figures[f"{name} loop reference"], figures[f"{name} core.metrics"], ">=", SPEEDUP_TARGET, EARLIER,
            )
        )
        checks.append(check(f"{name} metrics identical to the reference (1 = yes)", float(metrics[name] == expected), "==", 1.0, source=EARLIER))

    extra_mib, method = _peak_extra_mb(sims, txt2img, fold_size, seed, captions_per_image, dim)
    figures[f"{full} + {folds} peak extra memory"] = Figure((extra_mib,), "MiB")
    checks.append(check(f"{full} + {folds} peak extra memory", extra_mib, "<", EXTRA_MIB_TARGET, "MiB", EARLIER, note=method))
    del sims, sims_np
    large = _large_case(large_images, captions_per_image, dim, device, seed, large_repeats) if large_images else None
    if large is not None:
        label = f"{_k(large['n_images'])} x {_k(large['n_texts'])}"
        if large["peak_extra_mb"] is not None:  # its seconds are in `large` only: see _large_case
            figures[f"{label} peak extra memory"] = Figure((large["peak_extra_mb"],), "MiB")
        checks.append(
            check(f"{label} peak extra memory (chunked)", large["peak_extra_mb"], "<", EXTRA_MIB_TARGET, "MiB", EARLIER, note=large["note"])
        )
    return {
        "figures": figures_json(figures),
        "checks": checks,
        "notes": [
            f"{n_images} images x {n_images * captions_per_image} captions, {dim}-d, on {torch.device(device)};"
            f" {folds}: the mean over {n_folds} folds of {fold_size} consecutive images; the reference runs in"
            " numpy on the CPU.",
        ],
        "n_images": n_images,
        "n_texts": n_images * captions_per_image,
        "dim": dim,
        "device": str(torch.device(device)),
        "cpu_threads": torch.get_num_threads(),
        "sims_mb": n_images * n_images * captions_per_image * 4 / 2**20,
        "memory_method": method,
        "large": large,
        "metrics": metrics,
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


def _fast_protocol(sims: torch.Tensor, txt2img: torch.Tensor, fold_size: int | None) -> dict[str, dict[str, float]]:
    """The whole-matrix metrics, and the k-fold ones unless ``fold_size`` is None."""
    out = {"full": retrieval_recall(sims, txt2img)}
    if fold_size is not None:
        out["folds"] = kfold_recall(sims, txt2img, fold_size)
    return out


def _k(n: int) -> str:
    """``5000`` -> ``"5K"``; sizes that are not whole thousands as they are."""
    return f"{n // 1000}K" if n >= 1000 and n % 1000 == 0 else str(n)


def _synchronizer(device: torch.device):
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def _peak_extra_mb(
    sims: torch.Tensor, txt2img: torch.Tensor, fold_size: int | None, seed: int, captions_per_image: int, dim: int
) -> tuple[float | None, str]:
    if sims.device.type == "cuda":
        torch.cuda.synchronize(sims.device)
        torch.cuda.reset_peak_memory_stats(sims.device)
        before = torch.cuda.memory_allocated(sims.device)
        _fast_protocol(sims, txt2img, fold_size)
        return (torch.cuda.max_memory_allocated(sims.device) - before) / 2**20, "torch.cuda.max_memory_allocated"
    child = _child([sims.shape[0], captions_per_image, dim, seed, fold_size, 1])
    if child is None:
        return None, "unavailable: needs Linux /proc/self/clear_refs"
    return child["peak_extra_mb"], "child-process VmHWM growth, glibc mmap threshold pinned"


def _large_case(n_images: int, captions_per_image: int, dim: int, device: str, seed: int, repeats: int) -> dict[str, Any]:
    """The memory-only case: the whole-matrix protocol on ``n_images x n_images * captions_per_image``.

    Its ``seconds`` are not a speed figure on the CPU: the measuring child maps every buffer
    above 128 KiB afresh (the pinned mmap threshold), so they include that cost (one 25K x 125K
    run took 226 s on the 2-core machine while it was busy; the whole child, building the matrix
    included, spent 66 s in the kernel).
    """
    n_texts = n_images * captions_per_image
    sims_mb = n_images * n_texts * 4 / 2**20
    out: dict[str, Any] = {"n_images": n_images, "n_texts": n_texts, "sims_mb": sims_mb, "peak_extra_mb": None, "seconds": []}
    if torch.device(device).type == "cuda":
        sims, txt2img = _random_inputs(n_images, captions_per_image, dim, torch.device(device), seed)
        _, seconds = timed(lambda: retrieval_recall(sims, txt2img), repeats, _synchronizer(sims.device))
        out["peak_extra_mb"], method = _peak_extra_mb(sims, txt2img, None, seed, captions_per_image, dim)
        return {**out, "seconds": list(seconds.values), "note": method}
    available = _available_mb()
    if available is not None and available < sims_mb * _MEMORY_HEADROOM:
        return {**out, "note": f"not measured: the {sims_mb / 1024:.1f} GiB matrix needs {sims_mb * _MEMORY_HEADROOM / 1024:.1f} GiB free, {available / 1024:.1f} GiB is available"}
    child = _child([n_images, captions_per_image, dim, seed, None, repeats])
    if child is None:
        return {**out, "note": "not measured: needs Linux /proc/self/clear_refs"}
    method = "child-process VmHWM growth, glibc mmap threshold pinned; the matrix is built in the child only"
    return {**out, "peak_extra_mb": child["peak_extra_mb"], "seconds": child["seconds"], "note": method}


def _child(args: list) -> dict[str, Any] | None:
    """Run ``harness.bench._peak_rss`` on ``args``; None where /proc cannot measure it."""
    if not Path("/proc/self/clear_refs").exists():
        return None
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": _MMAP_THRESHOLD}
    command = [sys.executable, "-m", "harness.bench._peak_rss", json.dumps(args)]
    child = subprocess.run(command, cwd=_PROJECT_ROOT, env=env, capture_output=True, text=True)
    if child.returncode:
        raise RuntimeError(f"bench_retrieval: the memory-measuring child process failed:\n{child.stderr}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def _available_mb() -> float | None:
    available = proc_kib("/proc/meminfo", "MemAvailable")
    return None if available is None else available / 1024
