"""Decoding image files into the cache, with every problem reported at once.

Missing files are found by a cheap pass over all splits before any decoding; unreadable or
corrupt files are collected during the decoding pass and reported together at its end (the
half-written cache is discarded), so one run of ``harness prepare`` names every bad file.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from core.data.cache import fit_square
from core.errors import UserError

__all__ = ["check_inside_root", "check_files_exist", "Decoder"]

EXAMPLES = 5  # how many offending files an error message names


def _examples(items: list[str]) -> str:
    shown = ", ".join(items[:EXAMPLES])
    return shown + (f", ... ({len(items) - EXAMPLES} more)" if len(items) > EXAMPLES else "")


def check_inside_root(paths: dict[str, list[Path]], root: Path) -> None:
    """Raise one UserError naming the image paths that lead outside ``root`` (``../`` segments or
    an absolute path in an annotation file): an annotation file chooses which files are opened,
    and it may come from anywhere. Paths are compared as written, so symbolic links inside
    ``root`` (a dataset linked in from a larger disk) stay allowed.

    Args:
        paths: split name -> image files (``root / <path from the annotations>``).
        root: the image folder (``data.image_root``).
    """
    top = os.path.normpath(os.path.abspath(root))
    outside = [
        str(p) for files in paths.values() for p in files
        if os.path.commonpath([top, os.path.normpath(os.path.abspath(p))]) != top
    ]  # fmt: skip
    if outside:
        raise UserError(
            f"{len(outside)} image paths lead outside data.image_root={root} (annotation paths must be"
            f" relative and stay inside it): {_examples(outside)}"
        )


def check_files_exist(paths: dict[str, list[Path]], root: Path) -> None:
    """Raise one UserError naming the missing image files of all splits (count and examples).

    Args:
        paths: split name -> image files.
        root: the image folder (``data.image_root``), named in the message.
    """
    missing = {name: [str(p) for p in files if not p.is_file()] for name, files in paths.items()}
    missing = {name: files for name, files in missing.items() if files}
    if missing:
        total = sum(len(files) for files in missing.values())
        detail = "; ".join(f"{name}: {len(files)} of {len(paths[name])} ({_examples(files)})" for name, files in missing.items())
        raise UserError(f"{total} image files are missing under data.image_root={root}: {detail}")


def _load(path: Path, side: int) -> tuple[np.ndarray | None, str | None]:
    """One image file -> (uint8 (side, side, 3), None), or (None, reason) if it cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return fit_square(image, side), None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        return None, f"{path} ({type(err).__name__}: {err})"


class Decoder:
    """Decodes files to fitted uint8 squares, in order, in ``workers`` processes (0: in-process).

    Failed files yield a black square and are remembered; :meth:`raise_errors` reports them all.
    """

    def __init__(self, side: int, workers: int = 0):
        self.side = side
        self.workers = workers
        self.errors: list[str] = []

    def decode(self, paths: Iterable[Path]) -> Iterator[np.ndarray]:
        """Yield one ``(side, side, 3)`` uint8 array per path, in order."""
        load = functools.partial(_load, side=self.side)
        if self.workers == 0:
            results = map(load, paths)
            yield from self._collect(results)
            return
        with ProcessPoolExecutor(self.workers) as pool:
            yield from self._collect(pool.map(load, paths, chunksize=64))

    def _collect(self, results: Iterable[tuple[np.ndarray | None, str | None]]) -> Iterator[np.ndarray]:
        for image, error in results:
            if error is not None:
                self.errors.append(error)
                image = np.zeros((self.side, self.side, 3), np.uint8)
            yield image

    def raise_errors(self) -> None:
        """Raise one UserError naming every file that failed to decode so far (if any)."""
        if self.errors:
            raise UserError(f"{len(self.errors)} image files are unreadable or corrupt: {_examples(self.errors)}")
