"""``harness densify``: dense captions for a dataset's splits, with a rich progress bar per split."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from core.config import DataConfig
from core.data import Split, build_splits
from core.data.densify import DensifyConfig, DensifyStats, densify
from core.errors import UserError

__all__ = ["run_densify"]

console = Console()


class _SplitImages:
    """The ``(image id, uint8 image)`` pairs of some splits, read one at a time, with a length for
    the bar. One stream over all splits: the model is loaded once."""

    def __init__(self, splits: list[Split]):
        self.splits = splits

    def __len__(self) -> int:
        return sum(len(split.image_ids) for split in self.splits)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for split in self.splits:
            for index, image_id in enumerate(split.image_ids):
                yield image_id, split.images[index]


def run_densify(
    data: DataConfig,
    cfg: DensifyConfig,
    out_jsonl: Path,
    cache_dir: Path,
    splits: Sequence[str] = ("train", "val", "test"),
) -> DensifyStats:
    """Caption every image of the chosen splits into one JSONL file, resuming it if present.

    The lines name their images (``"image"`` key), so the file serves as ``data.dense_captions``
    for all splits at once. The images are those of the data cache (``harness prepare``): centre
    squares of side ``ceil(data.image_size * data.cache_margin)``. ``data.dense_captions`` is
    ignored here, so the file being written can already be named in the setting.

    Args:
        data: the data section (source, annotations, image root, cache side).
        cfg: model folder and generation settings.
        out_jsonl: the output file.
        cache_dir: parent folder of the data caches (``WORKDIR/data``).
        splits: split names to caption, in this order.
    Returns:
        what densify did (written, skipped, dropped, empty, seconds).
    """
    available = build_splits(data.model_copy(update={"dense_captions": None}), cache_dir)
    unknown = [name for name in splits if name not in available]
    if unknown:
        raise UserError(f"unknown splits {', '.join(unknown)}; this dataset has {', '.join(available)}")
    images = _SplitImages([available[name] for name in splits])
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task(f"densify {'+'.join(splits)}", total=len(images))
        stats = densify(images, out_jsonl, cfg, progress=lambda done, total: progress.update(bar, completed=done))
    empty = f", {stats.empty} empty" if stats.empty else ""
    console.print(f"{stats.written} captions written, {stats.skipped} already there{empty} ({stats.seconds:.0f}s) -> {out_jsonl}")
    return stats
