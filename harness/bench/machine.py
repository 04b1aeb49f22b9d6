"""What machine a benchmark ran on: CPU model, cores, memory, GPU (or that there was none),
library versions and the code's git commit."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from core.runtime import usable_cores
from harness.bench._proc import proc_field, proc_kib
from harness.tracking import provenance

__all__ = ["machine_info", "NO_GPU"]

NO_GPU = "none (torch.cuda.is_available() is False): no GPU figure was measured"


def machine_info(cpuinfo: Path = Path("/proc/cpuinfo"), meminfo: Path = Path("/proc/meminfo")) -> dict[str, Any]:
    """The machine as the benchmark saw it.

    Keys: ``cpu`` (the model name from ``/proc/cpuinfo``), ``cores`` (logical CPUs),
    ``usable_cores`` (those this process may run on), ``torch_threads``, ``memory_gib``,
    ``gpu`` (device names, or :data:`NO_GPU`), ``torch``, ``python``, ``platform``,
    ``git_commit`` and ``git_dirty``.

    Args:
        cpuinfo: the file holding ``model name`` lines (Linux).
        meminfo: the file holding ``MemTotal`` (Linux).
    """
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    code = provenance(ignored=("reports",))  # the benchmarks write reports/benchmarks themselves
    return {
        "cpu": proc_field(cpuinfo, "model name") or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": _memory_gib(meminfo),
        "gpu": ", ".join(gpus) if gpus else NO_GPU,
        "torch": torch.__version__,
        "python": code["versions"]["python"],
        "platform": platform.platform(),
        "git_commit": code["git_commit"],
        "git_dirty": code["git_dirty"],
    }


def _memory_gib(meminfo: Path) -> float | None:
    total = proc_kib(meminfo, "MemTotal")
    return round(total / 2**20, 1) if total else None
