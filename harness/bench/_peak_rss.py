"""Child-process side of the CPU memory measurement of ``harness.bench.retrieval`` (run with ``-m``).

A fresh process holds only the similarity matrix when it resets its RSS high-water mark, so the
growth it reads after one run of the fast path is that run's peak extra memory.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from harness.bench.retrieval import _fast_protocol, _random_inputs


def peak_rss_growth_mb(n_images: int, captions_per_image: int, dim: int, seed: int, fold_size: int) -> float:
    """RSS high-water-mark growth (MiB) over one run of the fast protocol on CPU, in this process.

    Args:
        n_images: images of the random similarity matrix (as ``bench_retrieval`` builds it).
        captions_per_image: captions per image.
        dim: embedding size.
        seed: seed of the random embeddings.
        fold_size: images per fold.
    """
    sims, txt2img = _random_inputs(n_images, captions_per_image, dim, torch.device("cpu"), seed)
    before = _proc_status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    _fast_protocol(sims, txt2img, fold_size)
    return (_proc_status_kib("VmHWM") - before) / 1024


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


if __name__ == "__main__":
    print(peak_rss_growth_mb(*json.loads(sys.argv[1])))
