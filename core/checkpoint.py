"""Checkpoints: safetensors for tensors, JSON for everything else, the resolved config beside them.

Never pickle: a checkpoint is ``<name>.safetensors`` (tensors under ``model.``, ``loss.`` and
``optim.`` prefixes) plus ``<name>.json`` (the training state and the optimiser's non-tensor
state). Both are written to a temporary name and renamed, so a crash mid-write never leaves a
checkpoint that looks complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from core.errors import UserError

__all__ = ["save_checkpoint", "load_checkpoint", "load_weights", "optimizer_to_flat", "optimizer_from_flat"]


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``path`` (.safetensors) and its ``.json`` sidecar atomically (tensors first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.safetensors")
    # safetensors refuses shared or non-contiguous storage: store independent contiguous copies.
    save_file({k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)
    sidecar = path.with_suffix(".json")
    tmp_json = sidecar.with_suffix(".tmp.json")
    tmp_json.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_json, sidecar)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if not path.is_file() or not sidecar.is_file():
        raise UserError(f"checkpoint not found or incomplete: {path} (and {sidecar.name})")
    return load_file(str(path)), json.loads(sidecar.read_text())


def load_weights(
    module: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str, optional: tuple[str, ...] = ()
) -> None:
    """Load the tensors under ``prefix`` into ``module``. Every key must match, except that the
    module's keys under an ``optional`` prefix may be absent (they keep their initial values)."""
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(optional)] if optional else result.missing_keys
    if missing or result.unexpected_keys:
        raise UserError(
            f"checkpoint does not match the model: missing {missing[:5]} ({len(missing)}),"
            f" unexpected {result.unexpected_keys[:5]} ({len(result.unexpected_keys)})"
        )


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser state dict into tensors (``optim.<param>.<name>``) and JSON."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Inverse of :func:`optimizer_to_flat`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            index, name = key[len("optim."):].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
