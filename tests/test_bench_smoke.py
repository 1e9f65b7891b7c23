"""The benchmark must keep working: a tiny run of every workload, checks included."""

from __future__ import annotations

import json

import pytest

import bench.loadgen
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
    # Closed loop: one process runs again at the rate two processes reached
    # (the ratio itself is checked below: 20 messages are too few to pace).
    for workload in ("fanout", "global"):
        two = rows[("mariadb-2p", workload)]
        assert rows[("mariadb", f"{workload}@{round(two['sends_per_s']):g}/s")]["ok"]


def _row(target, label, sends, cpu):
    return {"target": target, "label": label, "ok": True, "sends_per_s": sends, "server_cpu_us_per_delivery": cpu}


def test_two_processes_are_divided_by_one_process_at_the_same_load():
    results = [
        _row("mariadb", "fanout", 300, 50.0), _row("mariadb-2p", "fanout", 280, 63.0),
        _row("mariadb", "fanout@280/s", 270, 54.0),  # the equal-load pass, a little short of its rate
        _row("mariadb", "global", 380, 33.0), _row("mariadb-2p", "global", 280, 56.0),
        _row("mariadb", "global@280/s", 200, 40.0),  # far short: not the same load
    ]
    bench.run.add_ratios(results)
    rows = {(r["target"], r["label"]): r for r in results}
    assert rows[("mariadb-2p", "fanout")]["vs_one_process"] == {
        "cpu_per_delivery": 1.17, "at": "fanout@280/s", "one_process_cpu_us_per_delivery": 54.0}
    assert "vs_one_process" not in rows[("mariadb-2p", "global")]
    # An open-loop run: the same label, the same rate.
    results = [_row("mariadb", "fanout", 200, 70.0), _row("mariadb-2p", "fanout", 199, 84.0)]
    bench.run.add_ratios(results)
    assert results[1]["vs_one_process"]["cpu_per_delivery"] == 1.2
    # Closed loop without the pass: unequal loads, no ratio.
    results = [_row("mariadb", "fanout", 300, 50.0), _row("mariadb-2p", "fanout", 250, 70.0)]
    bench.run.add_ratios(results)
    assert "vs_one_process" not in results[1]


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


@pytest.mark.slow
def test_nproc_smoke_run_reads_only_its_audiences_entries_on_every_process(tmp_path):
    # Four processes, each with its own group's conversation, all in the
    # global chat: each process reads and delivers only its group's
    # conversation messages (the log is partitioned by audience); global
    # messages are read and delivered everywhere; the observer, with no
    # socket, reads no conversation message. One process runs the same
    # groups at the same load.
    assert bench.run.main(["--smoke", "--targets", "mariadb,mariadb-np", "--workloads", "nproc",
                           "--global-share", "0.2", "--results-dir", str(tmp_path)]) == 0
    (report,) = tmp_path.glob("bench-*.json")
    rows = {(r["target"], r["label"]): r for r in json.loads(report.read_text())["results"]}
    several = rows[("mariadb-np", "nproc")]
    assert several["processes"] == 4 and rows[("mariadb", f"nproc@{round(several['sends_per_s']):g}/s")]["ok"]
    # 20 messages, 5 per group, of which the share counts within each group
    per_group_global = sum(bench.loadgen.is_global_message(nth, 0.2) for nth in range(5))
    assert per_group_global == 1
    global_messages = 4 * per_group_global
    for process in several["per_process"]:
        read, delivered = process["entries_read"], process["entries_delivered"]
        assert read["conversation"] == delivered["conversation"] == 5 - per_group_global
        assert read["global"] == delivered["global"] == global_messages
    assert several["observer"]["entries_read"].get("conversation", 0) == 0
    assert several["observer"]["entries_delivered"].get("conversation", 0) == 0
    (single,) = rows[("mariadb", "nproc")]["per_process"]
    assert single["read_per_delivered"] == {"conversation": 1.0, "global": 1.0, "all_kinds": 1.0}


def test_target_names_and_the_revision_ratio():
    assert bench.run.TargetName.parse("mariadb@asyncio@rev=6e915a3") == bench.run.TargetName("mariadb", "asyncio", "6e915a3")
    assert bench.run.TargetName.parse("mariadb-2p@rev=abc").with_base("mariadb") == "mariadb@rev=abc"
    with pytest.raises(ValueError):
        bench.run.TargetName.parse("mariadb@fast")
    results = [
        _row("mariadb", "fanout", 250, 60.0), _row("mariadb@rev=6e915a3", "fanout", 245, 62.5),
        _row("mariadb", "global", 400, 30.0), _row("mariadb@rev=6e915a3", "global", 300, 40.0),  # unequal loads
    ]
    bench.run.add_ratios(results)
    assert results[1]["current_vs_rev"]["cpu_per_delivery"] == 0.96
    assert "cpu_per_delivery" not in results[3]["current_vs_rev"]
    assert "current_vs_rev" not in results[0]
