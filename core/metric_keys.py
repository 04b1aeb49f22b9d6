"""The retrieval metric keys, spelled once (torch-free, so the config, the CLI and the report can
import them without loading torch). ``core.metrics`` computes them; the harness's tracking names
(``val/<key>``, ``test/<key>``) and the report's columns are derived from them.

Recalls are in percent; ``rsum`` is the sum of the six recalls; ``medr`` / ``meanr`` are 1-based
ranks (lower is better).
"""

from __future__ import annotations

__all__ = ["KS", "DIRECTIONS", "RSUM", "recall_key", "rank_key", "RECALLS", "RANKS", "METRICS", "SELECTABLE", "TABLE_ORDER"]

KS = (1, 5, 10)  # the recall cut-offs of the VSE protocol
DIRECTIONS = ("i2t", "t2i")  # image-to-text, text-to-image
RSUM = "rsum"


def recall_key(direction: str, k: int) -> str:
    """``i2t_r1``: the share (percent) of ``direction``'s queries whose match is in the top ``k``."""
    return f"{direction}_r{k}"


def rank_key(direction: str, summary: str) -> str:
    """``t2i_medr``: the median (``medr``) or mean (``meanr``) 1-based rank of the matches."""
    return f"{direction}_{summary}"


RECALLS = tuple(recall_key(d, k) for d in DIRECTIONS for k in KS)
RANKS = tuple(rank_key(d, s) for d in DIRECTIONS for s in ("medr", "meanr"))
METRICS = (*RECALLS, RSUM, *RANKS)
SELECTABLE = (RSUM, *RECALLS)  # higher is better: the candidates for checkpoint selection
# a table's column order: the image-to-text block, the text-to-image block, then rSum
TABLE_ORDER = (*(key for d in DIRECTIONS for key in (*(recall_key(d, k) for k in KS), *(rank_key(d, s) for s in ("medr", "meanr")))), RSUM)
