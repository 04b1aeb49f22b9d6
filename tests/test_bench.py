"""The overhead benchmark splits a real study's wall time into core's compute and the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.bench.overhead import bench_overhead

TINY = Path(__file__).parent / "data" / "tiny.yaml"


@pytest.mark.slow
def test_overhead_benchmark_accounts_for_the_whole_wall_time():
    result = bench_overhead(str(TINY), epochs=1)
    assert result["pretrain_epochs"] == result["finetune_epochs"] == 1
    assert 0 < result["core_compute_s"] < result["wall_s"]
    assert result["overhead_s"] == pytest.approx(result["wall_s"] - result["core_compute_s"])
    assert 0 < result["checkpoint_s"] < result["overhead_s"]
    assert result["overhead_share"] == pytest.approx(result["overhead_s"] / result["wall_s"])
