"""`coda bench`: the capacity model from a tiny JSON, and the smoke runs of `scale` and `ingest --quick`.

The smoke runs use the real embedded broker and assert structure and sanity, never speed.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ops.bench import capacity, scale
from streams.settings import Settings

TINY_SCALE = {
    "suite": "scale",
    "cloud_workers": {"runs": {"1": {"cpu_us_per_event": 120.0, "cpu_us_per_event_less_idle": 110.0,
                                     "broker_bytes_per_event": 900.0}}},
    "fleets": {"runs": {"1": {"cpu_s_per_device": 0.07, "mb_per_device": 0.02}}},
}


def _bench(settings: Settings, tmp_path: Path, suite: str) -> dict[str, Any]:
    """`coda bench SUITE --quick` against the session broker, in a child process; its JSON."""
    out = tmp_path / f"{suite}.json"
    env = {**os.environ, **settings.to_env()}
    done = subprocess.run([sys.executable, "-m", "ops.cli", "bench", suite, "--quick", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    assert result["suite"] == suite and result["machine"]["load_avg"]
    return result


def test_capacity_tables_from_a_tiny_json(tmp_path: Path) -> None:
    """`coda bench capacity --from FILE` takes the unit costs it finds there and names their source."""
    src = tmp_path / "scale.json"
    src.write_text(json.dumps(TINY_SCALE))
    result = capacity.run(tmp_path / "capacity.json", False, [src])
    assert result["unit_costs"]["cloud_cpu_us_per_event"] == 110.0  # idle timers left out
    assert result["sources"]["broker_bytes_per_event"] == str(src)
    assert result["sources"]["match_cpu_ms"] == capacity.DOCS
    rows = result["rows"]
    assert [r["devices"] for r in rows] == list(capacity.DEVICES)
    for small, big in itertools.pairwise(rows):  # ten times the devices, ten times the traffic
        assert big["events_per_s_mean"] == pytest.approx(10 * small["events_per_s_mean"])
        assert big["worker_processes"] >= small["worker_processes"]
        assert big["index_gb_per_replica"] == pytest.approx(10 * small["index_gb_per_replica"])
    assert rows[0]["index"] == "per-worker Edge replica"
    assert rows[-1]["index"] == "Qdrant distributed mode" and rows[-1]["qdrant_shards"] >= 1
    assert rows[0]["devices"] < result["replica_crossover_devices"] < rows[-1]["devices"]
    md = (tmp_path / "capacity.md").read_text()
    assert "| per component | 1M | 10M | 100M |" in md


def test_capacity_without_a_source_says_so(tmp_path: Path) -> None:
    """Without --from there is nothing to model: a usage error, not made-up figures."""
    with pytest.raises(SystemExit):
        capacity.run(tmp_path / "c.json", False, [])


def test_pause_is_worst_latency_after_the_change_over_the_median_before() -> None:
    """A probe never answered counts as answered at the end of its window."""
    probes = [(0.0, 0.1), (1.0, 0.1), (2.0, 0.3), (3.0, 2.5), (4.0, None)]
    p = scale.pause(probes, at=2.0, until=5.0)
    assert p["baseline_p50_s"] == pytest.approx(0.1)
    assert p["worst_latency_s"] == pytest.approx(2.5)
    assert p["pause_s"] == pytest.approx(2.4)
    assert p["unanswered"] == 1 and p["probes"] == 3
    # a second change is judged against the steady state before the first, not the first's backlog
    later = scale.pause(probes, at=4.0, until=5.0, steady_until=2.0)
    assert later["baseline_p50_s"] == pytest.approx(0.1) and later["pause_s"] == pytest.approx(0.9)
    assert scale.balance([10, 10]) == 1.0 and scale.balance([15, 5]) == 1.5 and scale.balance([]) is None


@pytest.mark.smoke
def test_bench_scale_quick(settings: Settings, tmp_path: Path) -> None:
    """`coda bench scale --quick`: CPU per unit, balance and rebalance pauses for 1 and 2 members."""
    r = _bench(settings, tmp_path, "scale")
    assert r["cpus"] == os.cpu_count()
    cloud, fleets = r["cloud_workers"], r["fleets"]
    assert set(cloud["runs"]) == set(fleets["runs"]) == {"1", "2"}
    for n, w in cloud["runs"].items():
        assert w["workers"] == int(n) and len(w["envelopes_by_member"]) == int(n)
        assert sum(w["envelopes_by_member"]) == cloud["envelopes"]  # every envelope by exactly one member
        assert w["cpu_us_per_event"] > 0 and w["events_per_s"] > 0 and w["cpu_efficiency"] > 0
        if w["partitions_by_member"]:  # as the broker describes the group
            assert sorted(p for member in w["partitions_by_member"] for p in member) == list(range(8))
    assert cloud["runs"]["1"]["cpu_efficiency"] == 1.0 and cloud["runs"]["1"]["broker_bytes_per_event"] > 0
    for n, f in fleets["runs"].items():
        assert f["processes"] == int(n) and sum(f["devices_by_member"]) == fleets["devices"]
        assert sorted(p for member in f["partitions_by_member"] for p in member) == list(range(8))
        assert f["cpu_ms_per_device"] > 0 and f["cpu_efficiency"] > 0
        assert 0 < f["main_thread_cpu_s_per_device"] <= f["cpu_s_per_device"]  # the event loop's share
        assert f["databases_opened_per_device"] >= 1  # every device's database opened at least once
    for group in (cloud, fleets):
        for change in ("join", "leave"):
            pause = group["rebalance"][change]
            assert pause["probes"] > 0 and pause["pause_s"] >= 0 and pause["worst_latency_s"] > 0
    assert "wall ratio" in (tmp_path / "scale.md").read_text()


@pytest.mark.smoke
def test_bench_ingest_quick(settings: Settings, tmp_path: Path) -> None:
    """`coda bench ingest --quick`: the pipeline and both ceilings measured on the same envelopes."""
    r = _bench(settings, tmp_path, "ingest")
    assert r["events"] > 0
    m = r["measurements"]
    assert set(m) == {"pipeline-1", "raw-aiokafka+msgpack", "faust-noop"}
    assert all(v["events_per_s"] > 0 and v["ratio_to_raw"] > 0 for v in m.values())
    assert m["raw-aiokafka+msgpack"]["ratio_to_raw"] == 1.0


def test_stage_breakdown_adds_up_to_the_unprofiled_cpu() -> None:
    """Main-thread shares times the unprofiled main-thread CPU, plus the other threads, is the whole."""
    from ops.bench import stages

    threads = {"main": 2.0, "consumer": 0.5, "index": 0.25, "other": 0.0}
    plain = {"events": 10_000, "seconds": 4.0, "cpu_s": 2.75, "cpu_s_less_idle": 2.5, "threads": threads}
    shares = {name: 0.1 for name in stages.STAGES}
    profiled = {"main_shares": shares, "top": []}
    r = stages.breakdown(plain, profiled)
    us = r["stages_us_per_event"]
    assert r["cpu_us_per_event"] == pytest.approx(275.0)
    assert us["decode/validate"] == pytest.approx(20.0)  # 10 % of 200 µs of main thread an event
    assert us["Kafka fetch (consumer thread)"] == pytest.approx(50.0) and us["index thread"] == pytest.approx(25.0)
    assert sum(us.values()) == pytest.approx(r["cpu_us_per_event"])


def test_fleet_report_of_the_large_cycle_alone() -> None:
    """`coda bench fleet --large-only`: no size tables, the cycle's line with its CPU a device."""
    from ops.bench import fleet

    cycle = {"devices": 10_000, "seconds": 512.3, "devices_per_s": 19.5, "cpu_s_per_device": 0.0512,
             "rss_mb_peak": 401.0, "processes": 1}
    md = fleet._markdown([], cycle, 600.0)
    assert "| devices |" not in md
    assert "10,000 devices in one fleet process: 512 s (19.5 devices/s, 0.051 CPU s a device)" in md
    assert "10,000 devices in 2 fleet processes: 512 s" in fleet._markdown([], {**cycle, "processes": 2}, 600.0)


def test_plain_loop_in_the_fleet_order_reopens_each_database_and_ends_with_the_same_devices(tmp_path: Path) -> None:
    """The fleet's order — every device's actions, then every device's batches — with a pool smaller
    than the devices opens each database twice, as a fleet does; the ceiling loop opens each once.
    The order changes the cost, not the outcome: every device ends with the same rows."""
    import asyncio
    import sqlite3

    from ops.bench import fleet

    s = Settings(open_databases=2, fleet_concurrency=3)
    devices, payloads = fleet._job(s, 6)
    ceiling = asyncio.run(fleet._plain_loop(s.replace(state_dir=tmp_path / "ceiling"), devices, payloads))
    ordered = asyncio.run(fleet._plain_loop(s.replace(state_dir=tmp_path / "ordered"), devices, payloads,
                                            fleet_order=True))
    assert ceiling["devices_timed"] == ordered["devices_timed"] == 6
    assert ceiling["databases_opened_per_device"] == 1 and ordered["databases_opened_per_device"] == 2

    def rows(root: Path) -> dict[str, tuple[float, ...]]:
        found = {}
        for db in sorted(root.glob("devices/*/*/device.db")):
            with sqlite3.connect(db) as conn:
                found[db.parent.name] = tuple(
                    conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                    for table in ("local_samples", "outside_samples", "evaluations", "batches")
                ) + (conn.execute("SELECT round(sum(score), 6) FROM evaluations").fetchone()[0],)
        return found

    ends = rows(tmp_path / "ceiling")
    assert len(ends) == 6 and all(n[0] and n[2] and n[3] for n in ends.values())
    assert rows(tmp_path / "ordered") == ends


@pytest.mark.parametrize(("suite", "processes", "refusal"), [("stages", 2, "fleet option"), ("fleet", 0, "at least 1")])
def test_fleet_processes_are_refused_outside_the_fleet_suite_or_below_one(
        tmp_path: Path, suite: str, processes: int, refusal: str) -> None:
    import argparse

    from ops.cli import cmd_bench

    args = argparse.Namespace(suite=suite, out=tmp_path / "s.json", quick=True, sources=None, large=False,
                              large_only=False, fleet_processes=processes)
    with pytest.raises(SystemExit, match=refusal):
        cmd_bench.run(args, Settings())


def test_large_only_is_refused_outside_the_fleet_suite(tmp_path: Path) -> None:
    import argparse

    from ops.cli import cmd_bench

    args = argparse.Namespace(suite="capacity", out=tmp_path / "c.json", quick=True, sources=None, large=False,
                              large_only=True)
    with pytest.raises(SystemExit, match="fleet option"):
        cmd_bench.run(args, Settings())


def test_sizes_are_refused_outside_the_scale_suite(tmp_path: Path) -> None:
    import argparse

    from ops.cli import cmd_bench

    args = argparse.Namespace(suite="stages", out=tmp_path / "s.json", quick=True, sources=None, large=False,
                              large_only=False, users=6000, devices=None)
    with pytest.raises(SystemExit, match="scale suite"):
        cmd_bench.run(args, Settings())


def test_scale_refuses_an_empty_size(tmp_path: Path) -> None:
    from ops.bench import scale

    with pytest.raises(ValueError, match="at least 1"):
        scale.run(tmp_path / "s.json", True, Settings(), {"devices": 0})
