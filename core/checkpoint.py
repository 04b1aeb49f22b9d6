"""Checkpoints: safetensors for tensors, JSON for everything else, the resolved config beside them.

Never pickle: a checkpoint is ``<name>.safetensors`` (tensors under ``model.``, ``loss.`` and
``optim.`` prefixes) plus ``<name>.json`` (the training state and the optimiser's non-tensor
state, and the tensor file's size and SHA-256). Both are written atomically (:mod:`core.files`:
temporary file, fsync, rename), tensors first, so a crash or a full disk mid-write leaves the
previous checkpoint, never one that looks complete. Every read checks the tensor file against
its sidecar: a truncated, corrupted or mismatched checkpoint is a :class:`DamagedCheckpoint`
naming the file, never a loader's traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from core.errors import UserError
from core.files import atomic_write, atomic_write_text

__all__ = [
    "DamagedCheckpoint", "save_checkpoint", "load_checkpoint", "checkpoint_problem", "load_weights",
    "optimizer_to_flat", "optimizer_from_flat",
]

INTEGRITY = "_file"  # sidecar key: {"bytes", "sha256"} of the tensor file it describes
_CHUNK = 1 << 23  # bytes hashed per read
_OS_ERROR = re.compile(r"os error (\d+)")


class DamagedCheckpoint(UserError):
    """A checkpoint that cannot be read back as it was written (truncated, corrupted, or its two
    files from different writes). ``path`` is the tensor file."""

    def __init__(self, path: Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"damaged checkpoint {self.path}: {reason}")


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``path`` (.safetensors) and its ``.json`` sidecar, each atomically (tensors first).

    Raises:
        UserError: a write failed (disk full, ...); the previous checkpoint is left as it was.
    """
    path = Path(path)
    # safetensors refuses shared or non-contiguous storage: store independent contiguous copies.
    tensors = {k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: _save_file(tensors, tmp))
    integrity = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    atomic_write_text(path.with_suffix(".json"), json.dumps({**meta, INTEGRITY: integrity}, indent=1))


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`, checked against its sidecar.

    Raises:
        UserError: the checkpoint is missing.
        DamagedCheckpoint: it is truncated, corrupted, or its files do not belong together.
    """
    path = Path(path)
    meta = _meta(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise DamagedCheckpoint(path, str(err).strip().splitlines()[0]) from None
    return tensors, meta


def checkpoint_problem(path: Path) -> str | None:
    """What is wrong with a checkpoint (missing, truncated, corrupted), or None when it reads
    back as written; its tensors are hashed, not loaded.

    Args:
        path: the tensor file (``<name>.safetensors``).
    """
    try:
        _meta(Path(path))
    except DamagedCheckpoint as err:
        return err.reason
    except UserError as err:
        return str(err)
    return None


def _meta(path: Path) -> dict[str, Any]:
    sidecar = path.with_suffix(".json")
    if not path.is_file() or not sidecar.is_file():
        raise UserError(f"checkpoint not found or incomplete: {path} (and {sidecar.name})")
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise DamagedCheckpoint(path, f"its sidecar {sidecar.name} is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise DamagedCheckpoint(path, f"its sidecar {sidecar.name} is not a JSON object")
    integrity = meta.pop(INTEGRITY, None)
    if integrity is not None:  # checkpoints written before the sidecar recorded it have none
        size = path.stat().st_size
        if size != integrity.get("bytes"):
            raise DamagedCheckpoint(path, f"{size} bytes where {integrity.get('bytes')} were written (truncated?)")
        if _sha256(path) != integrity.get("sha256"):
            raise DamagedCheckpoint(path, "its content does not match the SHA-256 written with it")
    return meta


def _save_file(tensors: dict[str, torch.Tensor], tmp: Path) -> None:
    try:
        save_file(tensors, str(tmp))
    except SafetensorError as err:  # its I/O errors arrive as text: give them back their errno
        found = _OS_ERROR.search(str(err))
        if found is None:
            raise
        errno = int(found.group(1))
        raise OSError(errno, os.strerror(errno), str(tmp)) from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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
