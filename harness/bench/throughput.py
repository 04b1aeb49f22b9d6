"""Benchmark of training throughput: pairs per second of core's real fine-tuning step.

Every arm is one call of ``core.train.train_stage(config, "finetune", ...)``, the trainer every
study runs, for one epoch; its own ``pairs_per_s`` (pairs over the wall time of the epoch's
loop: data loading, collation, forward, losses, backward, optimiser step; validation and
checkpoints come after and are not counted) is the figure. Arms run round-robin, one epoch each
per round, so that a change in the machine's load hits every arm alike; the first round warms up
and is dropped.

- Image source: the uint8 cache (memory-mapped arrays, what ``harness prepare`` writes) against
  image files decoded with PIL at every step, as the released scripts read JPEGs. The files are
  the cached images themselves, written once as PNG and as JPEG (quality 95) to a temporary
  folder, so both paths feed the same pixels (JPEG: nearly) to the same model and batch; real
  datasets' files are larger than the cache's squares, so decoding them costs more than here.
- Method: D2S-VSE's step (the sparse-branch decoder and the frozen dense-caption teacher of
  dense-to-sparse distillation, as the setting configures them) against plain VSE (decoder depth
  0, distillation off), and each part alone, so the cost of each is a number.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.config import Config
from core.data import Split, build_splits
from core.errors import UserError
from core.stages import FINETUNE
from core.train import train_stage
from harness.bench.measure import PROPOSED, Figure, figures_json, ratio_check
from harness.config import resolve

__all__ = ["bench_throughput", "ImageFiles", "FORMATS", "VARIANTS"]

# file format -> (suffix, PIL save options)
FORMATS: dict[str, tuple[str, dict[str, Any]]] = {"png": (".png", {}), "jpeg": (".jpg", {"quality": 95})}
# the methods D2S-VSE (the setting as it is) is compared with -> their values on top of the setting
VARIANTS: dict[str, dict[str, Any]] = {
    "plain VSE": {"model.decoder.depth": 0, "finetune.distill.enabled": False, "finetune.structure.enabled": False},
    "teacher only": {"model.decoder.depth": 0},
    "decoder only": {"finetune.distill.enabled": False},
}
CACHE_TARGET = 1.0  # the cache is no slower than decoding files (proposed: the point of `harness prepare`)
METHOD_TARGET = 0.5  # D2S-VSE's step keeps at least half of plain VSE's pairs/s (proposed)


class ImageFiles:
    """Image files read like an ``ImageStore``: ``len(files)``, ``files[i] -> uint8 (H, W, 3)``,
    decoded from disk with PIL at every access."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        with Image.open(self.paths[index]) as image:
            return np.array(image.convert("RGB"))


def bench_throughput(
    setting: str = "cpu-small",
    repeats: int = 3,
    num_train: int = 120,
    num_val: int = 50,
    formats: tuple[str, ...] = tuple(FORMATS),
    variants: tuple[str, ...] = tuple(VARIANTS),
    warmup: int = 1,
) -> dict[str, Any]:
    """Pairs per second of the fine-tuning step per image source and per method.

    Args:
        setting: the base setting (name or path); its model, batch size and data pipeline.
        repeats: measured rounds (after one warm-up round).
        num_train: SynthScenes training images (an epoch is one pass over their sparse captions;
            the step's cost does not depend on it).
        num_val: SynthScenes validation images (each arm's epoch ends with a validation).
        formats: the image-file formats to decode, from :data:`FORMATS`.
        variants: the methods compared with D2S-VSE, from :data:`VARIANTS` (``plain VSE`` is
            the one its check needs).
        warmup: unmeasured rounds first.
    """
    for kind, asked, known in (("image format", formats, FORMATS), ("variant", variants, VARIANTS)):
        unknown = [name for name in asked if name not in known]
        if unknown:
            raise UserError(f"unknown {kind} {unknown}; known: {', '.join(known)}")
    if repeats < 1 or warmup < 0:
        raise UserError(f"repeats must be at least 1 and warmup at least 0, got {repeats} and {warmup}")
    reduced = {"data.synthscenes.num_train": num_train, "data.synthscenes.num_val": num_val, "finetune.epochs": 1}
    base = resolve(setting, reduced)
    if base.data.source != "synthscenes":
        raise UserError(f"bench_throughput runs on SynthScenes; setting {setting} reads data.source={base.data.source}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        splits = build_splits(base.data, tmp / "data")
        sources = {"uint8 cache": splits} | {
            f"{fmt.upper()} files": _with_files(splits, tmp / fmt, fmt) for fmt in formats
        }
        arms: dict[str, tuple[Config, Mapping[str, Split]]] = {
            f"D2S-VSE, {source}": (base, source_splits) for source, source_splits in sources.items()
        }
        arms |= {
            f"{method}, uint8 cache": (resolve(setting, {**reduced, **values}), splits) for method, values in VARIANTS.items() if method in variants
        }
        rates: dict[str, list[float]] = {name: [] for name in arms}
        for round_ in range(warmup + repeats):
            for i, (name, (config, arm_splits)) in enumerate(arms.items()):
                result = train_stage(config, FINETUNE.name, tmp / "runs" / f"{round_}-{i}", splits=dict(arm_splits))
                if round_ >= warmup:
                    rates[name].append(result.history[-1]["train"]["pairs_per_s"])
    figures = {name: Figure(tuple(values), "pairs/s") for name, values in rates.items()}
    cache = figures["D2S-VSE, uint8 cache"]
    checks = [
        ratio_check(f"uint8 cache / {source} (pairs/s)", cache, figures[f"D2S-VSE, {source}"], ">=", CACHE_TARGET, PROPOSED)
        for source in sources
        if source != "uint8 cache"
    ]
    if "plain VSE, uint8 cache" in figures:
        checks.append(
            ratio_check("D2S-VSE / plain VSE (pairs/s)", cache, figures["plain VSE, uint8 cache"], ">=", METHOD_TARGET, PROPOSED)
        )
    return {
        "figures": figures_json(figures),
        "checks": checks,
        "notes": [
            f"Setting {setting}: batch {base.finetune.batch_size}, images {base.data.image_size} px, decoder depth"
            f" {base.model.decoder.depth}, on {base.runtime.device}; SynthScenes reduced to {num_train} training"
            f" images ({len(splits['train'].captions)} pairs an epoch) and {num_val} validation images.",
            f"Each figure: one epoch of the real train_stage per round, round-robin over the arms, after {warmup} warm-up round(s).",
            "Image files hold the cached squares (side "
            f"{splits['train'].images.shape[1]} px), decoded with PIL in the data loader"
            f" ({base.data.num_workers} workers, the setting's), like the cache.",
        ],
        "setting": setting,
        "batch_size": base.finetune.batch_size,
        "pairs_per_epoch": len(splits["train"].captions),
        "num_train": num_train,
        "num_val": num_val,
        "num_workers": base.data.num_workers,
    }


def _with_files(splits: Mapping[str, Split], folder: Path, fmt: str) -> dict[str, Split]:
    """The splits with the train images written as ``fmt`` files and read back from them."""
    suffix, options = FORMATS[fmt]
    folder.mkdir(parents=True)
    train = splits["train"]
    paths = []
    for i in range(len(train.images)):
        path = folder / f"{i:06d}{suffix}"
        Image.fromarray(train.images[i]).save(path, **options)
        paths.append(path)
    return {**splits, "train": dataclasses.replace(train, images=ImageFiles(paths))}
