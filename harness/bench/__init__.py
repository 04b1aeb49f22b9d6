"""Benchmarks: speed and memory of core's fast paths against naive references (``harness bench``)."""

from harness.bench.retrieval import bench_retrieval

__all__ = ["bench_retrieval"]
