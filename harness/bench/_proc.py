"""Reading Linux /proc files (CPU model, memory, a process's resident-set figures)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["proc_field", "proc_kib"]


def proc_field(path: str | Path, field: str) -> str | None:
    """The value of the first ``field: value`` line of a /proc file; None when the file or field is absent.

    Args:
        path: e.g. ``/proc/cpuinfo``, ``/proc/meminfo``, ``/proc/self/status``.
        field: the name before the colon, e.g. ``model name``.
    """
    path = Path(path)
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == field:
            return value.strip()
    return None


def proc_kib(path: str | Path, field: str) -> int | None:
    """A ``field: N kB`` value of a /proc file in KiB (``MemAvailable``, ``VmHWM``, ...); None when absent."""
    value = proc_field(path, field)
    return int(value.split()[0]) if value else None
