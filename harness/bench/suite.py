"""``harness bench``: run the named benchmarks and write each one's record to ``<out>/<name>.json``,
then ``<out>/benchmarks.md`` from every record there (``harness.bench.writer``).

A benchmark is a function returning a JSON-able dict; the keys ``figures``, ``checks`` and
``notes`` (``harness.bench.measure``) are what ``benchmarks.md`` shows with targets. Benchmarks
whose signature takes ``device`` get the command's ``--device``.
"""

from __future__ import annotations

import inspect
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from core.errors import UserError
from harness.bench.endtoend import bench_end_to_end
from harness.bench.machine import machine_info
from harness.bench.measure import ISSUE, check
from harness.bench.overhead import bench_overhead
from harness.bench.retrieval import bench_retrieval
from harness.bench.scale import bench_dry_run, bench_report
from harness.bench.sharing import bench_sharing
from harness.bench.sweep import bench_sweep
from harness.bench.throughput import bench_throughput
from harness.bench.writer import write_record

__all__ = ["BENCHMARKS", "run_benchmarks"]

BENCHMARKS: dict[str, Callable[..., dict]] = {
    "retrieval": bench_retrieval,  # target: >= 10x the per-query loop, well under 2 GB extra
    "overhead": bench_overhead,  # target: harness overhead < 5% of a run's wall time (CPU)
    "sweep": bench_sweep,  # target: the median pruner trains <= 60% of the epochs, best value within noise
    "throughput": bench_throughput,  # pairs/s: uint8 cache vs image files, D2S-VSE vs plain VSE
    "sharing": bench_sharing,  # decoder depth x 3 seeds: 3 pre-trainings instead of 12, and the time saved
    "report": bench_report,  # harness report over 1,000 runs: < 10 s
    "dry-run": bench_dry_run,  # harness run --dry-run of 1,000 arms: < 5 s
    "e2e": bench_end_to_end,  # the README's main job: <= 10 min on 2 cores (long: last)
}


def run_benchmarks(names: list[str], out_dir: Path, device: str = "cpu", isolate: bool = True) -> list[Path]:
    """Run benchmarks by name; write each one's record as it finishes, and ``benchmarks.md``.

    Args:
        names: benchmark names (empty: all of :data:`BENCHMARKS`, in its order).
        out_dir: where ``<name>.json`` and ``benchmarks.md`` go.
        device: the device of the benchmarks that take one.
        isolate: run each benchmark in a fresh (spawned) process, so that none inherits another's
            memory, threads or per-process caches (the benchmark must be a module-level function).
    """
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise UserError(f"unknown benchmark {unknown}; known: {', '.join(BENCHMARKS)}")
    written, seconds = [], {}
    suite_started, date = time.perf_counter(), time.strftime("%Y-%m-%d %H:%M")
    for name in names or list(BENCHMARKS):
        bench = BENCHMARKS[name]
        kwargs = {"device": device} if "device" in inspect.signature(bench).parameters else {}
        started = time.perf_counter()
        result = _isolated(bench, kwargs) if isolate else bench(**kwargs)
        seconds[name] = time.perf_counter() - started
        command = f"harness bench {name}" + (f" --device {device}" if kwargs else "")
        written.append(write_record(out_dir, _record(name, command, time.strftime("%Y-%m-%d %H:%M"), seconds[name], result)))
    if not names:  # the whole suite in one command: its own wall time is a figure with a target
        total = time.perf_counter() - suite_started
        written.append(write_record(out_dir, _record(SUITE, "harness bench" + ("" if device == "cpu" else f" --device {device}"), date, total, _suite_result(seconds, total))))
    return written


SUITE = "suite"  # the record of a whole-suite run
SUITE_TARGET_S = 30 * 60  # issue 14: the whole suite within 30 minutes on the 2-core machine


def _record(name: str, command: str, date: str, seconds: float, result: dict) -> dict:
    return {"benchmark": name, "command": command, "date": date, "seconds": seconds, "machine": machine_info(), "result": result}


def _suite_result(seconds: dict[str, float], total: float) -> dict:
    return {
        "checks": [check("every benchmark in one harness bench, wall time", total, "<=", SUITE_TARGET_S, unit="s", source=ISSUE)],
        "seconds": seconds,
        "notes": ["Each benchmark's wall time in this run is under `seconds`; the total adds what ran between them."],
    }


def _isolated(bench: Callable[..., dict], kwargs: dict) -> dict:
    # not a multiprocessing.Pool: its workers are daemons, which may not start processes
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(bench, **kwargs).result()
