"""Where and how a stage computes: the device, the numeric precision, seeding, the process world.

The trainer, evaluation, densify and the harness's planner all read these rules from here, so
"auto" means one thing everywhere: the first CUDA device when there is one, else the CPU; bf16 on
a GPU, fp32 on a CPU.
"""

from __future__ import annotations

import functools
import random
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist

from core.errors import UserError

__all__ = [
    "Precision",
    "PRECISION_DTYPES",
    "cuda_available",
    "resolve_device",
    "resolve_precision",
    "autocast_dtype",
    "seed_everything",
    "world",
]

Precision = Literal["fp32", "bf16", "fp16"]
PRECISION_DTYPES: dict[Precision, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
AUTO_PRECISION: dict[str, Precision] = {"cuda": "bf16", "cpu": "fp32"}  # device type -> what "auto" means


@functools.cache
def cuda_available() -> bool:
    """Whether this process can use a CUDA device (asked once)."""
    return torch.cuda.is_available()


def resolve_device(name: str, option: str = "runtime.device") -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU.

    Args:
        name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        option: the setting's name in errors.
    """
    if name == "auto":
        name = "cuda" if cuda_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"{option}={name!r} is not a device (auto, cpu, cuda, cuda:N): {err}") from None
    if device.type == "cuda" and not cuda_available():
        raise UserError(f"{option}={name!r} but CUDA is not available")
    return device


def resolve_precision(precision: str, device: str | torch.device) -> Precision:
    """``auto`` -> bf16 on a GPU, fp32 on a CPU; any other value as it is.

    Args:
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        device: a device or device name (``auto`` resolved first).
    """
    if precision != "auto":
        return precision  # type: ignore[return-value]
    device_type = resolve_device(device).type if isinstance(device, str) else device.type
    return AUTO_PRECISION.get(device_type, "fp32")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``; None for fp32 (autocast off)."""
    resolved = resolve_precision(precision, device)
    return None if resolved == "fp32" else PRECISION_DTYPES[resolved]


def seed_everything(seed: int) -> None:
    """One seed for python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def world() -> tuple[int, int]:
    """``(rank, world size)`` of this process; ``(0, 1)`` without torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
