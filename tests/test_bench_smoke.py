"""The benchmark must keep working: a tiny run of every workload, checks included."""

from __future__ import annotations

import json

import pytest

import bench.run


@pytest.mark.slow
def test_benchmark_smoke_run_passes_its_delivery_checks(tmp_path):
    # Tiny sizes: this proves the load generator, the baseline and our server
    # still fit together and deliver exactly once in order; it measures nothing.
    assert bench.run.main(
        ["--smoke", "--targets", "baseline,embedded,mariadb,mariadb-2p", "--results-dir", str(tmp_path)]
    ) == 0
    (report,) = tmp_path.glob("bench-*.json")
    rows = {(r["target"], r["label"]): r for r in json.loads(report.read_text())["results"]}
    # Closed loop: one process runs again at the rate two processes reached,
    # and the two-process ratio divides by that run.
    for workload in ("fanout", "global"):
        two = rows[("mariadb-2p", workload)]
        again = f"{workload}@{round(two['sends_per_s']):g}/s"
        assert rows[("mariadb", again)]["ok"]
        assert two["vs_one_process"]["at"] == again
        assert two["vs_one_process"]["cpu_per_delivery"] > 0


@pytest.mark.slow
def test_storm_smoke_run_resumes_after_a_restart_on_mariadb(tmp_path):
    # The reconnect storm, both ways (client drop, server restart), 20 sockets:
    # every socket gets a first frame back; on MariaDB + Redis every one of
    # them resumes, also after the restart; the embedded backend resumes after
    # a drop and answers resume_failed after a restart (its log was in memory).
    assert bench.run.main([
        "--smoke", "--targets", "baseline,embedded,mariadb", "--workloads", "storm,storm-restart",
        "--results-dir", str(tmp_path),
    ]) == 0  # fmt: skip
    (report,) = tmp_path.glob("bench-*.json")
    rows = {(r["target"], r["label"]): r for r in json.loads(report.read_text())["results"]}
    assert rows[("mariadb", "storm")]["first_frames"] == {"resumed": 20}
    assert rows[("mariadb", "storm-restart")]["first_frames"] == {"resumed": 20}
    assert rows[("embedded", "storm")]["first_frames"] == {"resumed": 20}
    assert rows[("embedded", "storm-restart")]["first_frames"] == {"resume_failed": 20}
    assert rows[("baseline", "storm-restart")]["first_frames"] == {"connected": 20}
