"""``harness bench``: run the named benchmarks and write each result to ``<out>/<name>.json``,
plus ``<out>/README.md`` with every result written so far and the command that made it."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from core.errors import UserError
from harness.bench.overhead import bench_overhead
from harness.bench.retrieval import bench_retrieval
from harness.bench.sweep import bench_sweep

__all__ = ["BENCHMARKS", "run_benchmarks"]

BENCHMARKS: dict[str, Callable[..., dict]] = {
    "retrieval": bench_retrieval,  # target: >= 10x the per-query loop, well under 2 GB extra
    "overhead": bench_overhead,  # target: harness overhead < 5% of a run's wall time (CPU)
    "sweep": bench_sweep,  # target: the median pruner trains <= 60% of the epochs, best value within noise
}


def run_benchmarks(names: list[str], out_dir: Path, device: str = "cpu") -> list[Path]:
    """Run benchmarks by name and write their results.

    Args:
        names: benchmark names (empty: all of :data:`BENCHMARKS`).
        out_dir: where ``<name>.json`` and ``README.md`` go.
        device: the device of the benchmarks that take one.
    """
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise UserError(f"unknown benchmark {unknown}; known: {', '.join(BENCHMARKS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names or list(BENCHMARKS):
        kwargs = {"device": device} if name == "retrieval" else {}
        result = {
            "benchmark": name,
            "command": f"harness bench {name}" + (f" --device {device}" if kwargs else ""),
            "date": time.strftime("%Y-%m-%d"),
            "machine": _machine(device),
            "result": BENCHMARKS[name](**kwargs),
        }
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")
        written.append(path)
    (out_dir / "README.md").write_text(_summary(out_dir))
    return written


def _machine(device: str) -> dict[str, Any]:
    info = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _summary(out_dir: Path) -> str:
    lines = ["# Benchmarks", "", "Written by `harness bench`; each JSON holds the full result.", ""]
    for path in sorted(out_dir.glob("*.json")):
        record = json.loads(path.read_text())
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in record["result"].items() if not isinstance(v, dict)}
        lines += [f"## {record['benchmark']}", "", f"`{record['command']}` ({record['date']}, {record['machine']})", ""]
        lines += ["| key | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in shown.items()], ""]
    return "\n".join(lines)
