"""The benchmark must keep working: a tiny run of every workload, checks included."""

from __future__ import annotations

import pytest

import bench.run


@pytest.mark.slow
def test_benchmark_smoke_run_passes_its_delivery_checks(tmp_path):
    # Tiny sizes: this proves the load generator, the baseline and our server
    # still fit together and deliver exactly once in order; it measures nothing.
    assert bench.run.main(["--smoke", "--targets", "baseline,embedded,mariadb", "--results-dir", str(tmp_path)]) == 0
