"""Where and how a stage computes: the device, the numeric precision, seeding, the process world.

The trainer, evaluation, densify and the harness's planner all read these rules from here, so
"auto" means one thing everywhere: the first CUDA device when there is one, else the CPU; bf16 on
a GPU, fp32 on a CPU. torch is imported only where a function needs it: the planner asks what
"auto" means on every dry run, and on a machine without a GPU driver it need not load torch (2 s).
"""

from __future__ import annotations

import functools
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from core.errors import UserError

if TYPE_CHECKING:
    import torch

__all__ = [
    "Precision",
    "cuda_available",
    "resolve_device",
    "device_type",
    "resolve_precision",
    "precision_dtype",
    "autocast_dtype",
    "seed_everything",
    "world",
    "init_distributed",
    "usable_cores",
]

Precision = Literal["fp32", "bf16", "fp16"]
AUTO_PRECISION: dict[str, Precision] = {"cuda": "bf16", "cpu": "fp32"}  # device type -> what "auto" means
# torch's CUDA (and ROCm, which torch also calls cuda) needs a kernel driver: without one of these
# no process can see a GPU, whatever torch says
GPU_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd")


@functools.cache
def cuda_available() -> bool:
    """Whether this process can use a CUDA device (asked once; torch is not loaded when no GPU
    driver is installed)."""
    if not any(Path(p).exists() for p in GPU_DRIVER_FILES):
        return False
    import torch

    return torch.cuda.is_available()


def device_type(name: str, option: str = "runtime.device") -> str:
    """``cpu``, ``cuda`` or ``mps`` for a device name (``auto`` resolved), without loading torch on
    a CPU machine, and without requiring the device here: a plan for a cluster's GPUs is made on
    a login node that has none.

    Args:
        name: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        option: the setting's name in errors.
    """
    if name == "auto":
        return "cuda" if cuda_available() else "cpu"
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not index.isdigit()):
        raise UserError(f"{option}={name!r} is not a device: use auto, cpu, cuda or cuda:N")
    return kind


def resolve_device(name: str, option: str = "runtime.device") -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU.

    Args:
        name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        option: the setting's name in errors.
    """
    import torch

    if name == "auto":
        name = "cuda" if cuda_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"{option}={name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"{option}={name!r}: the harness runs on auto, cpu, cuda or cuda:N, not {device.type}")
    if device.type == "cuda" and not cuda_available():
        raise UserError(f"{option}={name!r} but CUDA is not available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"{option}={name!r} but this machine has {torch.cuda.device_count()} CUDA devices")
    return device


def resolve_precision(precision: str, device: str | torch.device) -> Precision:
    """``auto`` -> bf16 on a GPU, fp32 on a CPU; any other value as it is.

    Args:
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        device: a device or device name (``auto`` resolved first).
    """
    if precision != "auto":
        return precision  # type: ignore[return-value]
    kind = device_type(device) if isinstance(device, str) else device.type
    return AUTO_PRECISION.get(kind, "fp32")


def precision_dtype(precision: Precision) -> torch.dtype:
    """The torch dtype of a resolved precision."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``; None for fp32 (autocast off)."""
    resolved = resolve_precision(precision, device)
    return None if resolved == "fp32" else precision_dtype(resolved)


def seed_everything(seed: int) -> None:
    """One seed for python, numpy and torch."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def world() -> tuple[int, int]:
    """``(rank, world size)`` of this process; ``(0, 1)`` without torch.distributed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device_name: str) -> torch.device:
    """Join the process group a launcher (torchrun, ``torch.distributed.run``) set up through the
    environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``), and return this
    process's device: NCCL and ``cuda:LOCAL_RANK`` on GPUs, gloo on the CPU. Without a launcher
    (``WORLD_SIZE`` unset or 1) nothing is joined and the device is ``device_name``'s.

    Args:
        device_name: ``runtime.device`` (``auto``, ``cpu``, ``cuda``; an index is replaced by the
            local rank's).
    """
    import torch
    import torch.distributed as dist

    device = resolve_device(device_name)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask: a container's or a SLURM job's
    share, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
