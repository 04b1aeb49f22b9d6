"""Child-process side of the CPU memory measurement of ``harness.bench.retrieval`` (run with ``-m``).

A fresh process holds only the similarity matrix when it resets its RSS high-water mark, so the
growth it reads after the runs of the fast path is their peak extra memory. It prints one JSON
line: ``{"peak_extra_mb": MiB, "seconds": [wall seconds of each run]}``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from harness.bench._proc import proc_kib
from harness.bench.retrieval import _fast_protocol, _random_inputs

_STATUS = "/proc/self/status"


def peak_rss_growth(
    n_images: int, captions_per_image: int, dim: int, seed: int, fold_size: int | None, repeats: int = 1
) -> dict[str, object]:
    """RSS high-water-mark growth (MiB) over ``repeats`` runs of the fast protocol on CPU, in this
    process, and each run's wall time.

    Args:
        n_images: images of the random similarity matrix (as ``bench_retrieval`` builds it).
        captions_per_image: captions per image.
        dim: embedding size.
        seed: seed of the random embeddings.
        fold_size: images per fold; None runs the whole-matrix protocol only.
        repeats: runs of the fast protocol.
    """
    sims, txt2img = _random_inputs(n_images, captions_per_image, dim, torch.device("cpu"), seed)
    before = proc_kib(_STATUS, "VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        _fast_protocol(sims, txt2img, fold_size)
        seconds.append(time.perf_counter() - start)
    return {"peak_extra_mb": (proc_kib(_STATUS, "VmHWM") - before) / 1024, "seconds": seconds}


if __name__ == "__main__":
    print(json.dumps(peak_rss_growth(*json.loads(sys.argv[1]))))
