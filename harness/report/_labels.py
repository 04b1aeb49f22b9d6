"""Readable names for config keys and metrics (axis labels, table headers)."""

from __future__ import annotations

from core.config import Config
from core.metric_keys import RSUM

SECTIONS = tuple(Config.model_fields)  # the config's top level
# Words that read better spelled out; everything else is the key's own words.
_WORDS = {
    "num": "number of",
    "num_tokens": "tokens",
    "lr": "learning rate",
    "pretrain": "pre-training",
    "finetune": "fine-tuning",
}
_KINDS = {"r1": "R@1", "r5": "R@5", "r10": "R@10", "medr": "MedR", "meanr": "MeanR"}


def human_name(key: str) -> str:
    """A dotted config key as an axis label: ``model.decoder.depth`` -> ``Decoder depth``.

    The top-level section is dropped when two parts are left (``finetune.distill.metric`` ->
    ``Distill metric``, but ``pretrain.epochs`` -> ``Pre-training epochs``), at most the last two parts are kept, and a few words are spelled out
    (``model.decoder.num_tokens`` -> ``Decoder tokens``).

    Args:
        key: a dotted config key.
    """
    parts = key.split(".")
    if len(parts) > 2 and parts[0] in SECTIONS:
        parts = parts[1:]
    words = " ".join(_WORDS.get(part, part).replace("_", " ") for part in parts[-2:])
    words = " ".join(_WORDS.get(word, word) for word in words.split(" "))
    return words[:1].upper() + words[1:]


def metric_label(metric: str) -> str:
    """``i2t_r1`` -> ``I2T R@1``, ``rsum`` -> ``rSum``, ``t2i_medr`` -> ``T2I MedR``.

    Args:
        metric: a metric key (``harness.tracking.names.METRICS``).
    """
    if metric == RSUM:
        return "rSum"
    direction, _, kind = metric.partition("_")
    return f"{direction.upper()} {_KINDS.get(kind, kind)}"


def lower_is_better(metric: str) -> bool:
    """Median and mean ranks: smaller is better; recalls and rSum: larger.

    Args:
        metric: a metric key.
    """
    return metric.endswith(("medr", "meanr"))
