"""Benchmarks (``harness bench``): speed and memory of core's fast paths against naive references,
and the harness's own overhead."""

from harness.bench.retrieval import bench_retrieval
from harness.bench.suite import BENCHMARKS, run_benchmarks

__all__ = ["bench_retrieval", "BENCHMARKS", "run_benchmarks"]
