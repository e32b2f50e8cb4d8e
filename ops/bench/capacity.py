"""`coda bench capacity --from FILE.json`: what 1M, 10M and 100M devices need, from measured unit costs.

The unit costs come from `coda bench` JSON files (`scale`, `stages`, `fleet`, `match`,
`device`); a cost that none of the files gives falls back to the figure recorded in
docs/benchmarks.md, and the output names the source of each. The rates are the paper's:
every device active daily, pulls of up to 12 batches × 25 samples, K = 100 neighbours, one
re-match a day. The model is arithmetic over those figures (`model`), so docs/scaling.md can
be regenerated whenever a bench is re-run.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from core.sample import DAY
from ops.bench.common import table, write_report

DEVICES = (1_000_000, 10_000_000, 100_000_000)


@dataclass(frozen=True)
class Assumptions:
    """Rates and planning margins (not measured here; each can be changed in one place)."""

    events_per_device_day: float = 30.0  # the benches' synthetic logs: 20-40 events per user and day
    batches_per_day: int = 12  # paper: up to 12 pulls of 25 samples a day
    batch_samples: int = 25
    k_neighbours: int = 100
    rematches_per_day: float = 1.0
    rematch_window_h: float = 4.0  # the daily re-match runs in this window after the day ends
    peak_over_mean: float = 3.0  # diurnal peak of event traffic over its daily mean
    core_utilisation: float = 0.6  # plan cores to run at most this busy
    replication_factor: int = 3  # Kafka topic replication
    partition_mb_s: float = 10.0  # planning throughput of one partition
    broker_mb_s: float = 100.0  # planning write throughput of one broker (replicated bytes)
    dim: int = 256  # user-vector dimension (tag buckets)
    hnsw_m: int = 16
    point_overhead_bytes: int = 120  # payload (user, count, last_ts), id, bookkeeping
    replica_budget_gb: float = 8.0  # index memory a worker may hold before a shared cluster is cheaper
    qdrant_node_gb: float = 64.0  # RAM of one Qdrant node; half of it for the index
    qdrant_replication: int = 2


@dataclass(frozen=True)
class UnitCosts:
    """Measured costs; `sources` names the file or document each came from."""

    cloud_cpu_us_per_event: float = 100.0  # ingest end to end to the index, one worker
    replica_cpu_us_per_event: float = 0.0  # the part of it a per-worker replica repeats in every worker
    broker_bytes_per_event: float = 2_000.0  # produced to all topics and changelogs, per event
    match_cpu_ms: float = 1.7  # one KNN query at 1M users (Edge, p50): the re-match's floor
    down_kb_per_device_day: float = 11.2  # one training trigger's download (300 samples)
    fleet_cpu_s_per_device_day: float = 0.061  # the fleet bench's job (3 batches)
    fleet_job_batches: int = 3
    fleet_mb_per_device: float = 0.009
    sources: tuple[tuple[str, str], ...] = ()


DOCS = "docs/benchmarks.md (earlier runs)"


def unit_costs(docs: list[tuple[str, dict[str, Any]]]) -> UnitCosts:
    """Pick each unit cost from the bench JSONs given (later files win); the rest stay at their recorded figure."""
    found: dict[str, tuple[float, str]] = {}
    for name, doc in docs:
        suite = doc.get("suite")
        if suite == "scale":
            one = doc.get("cloud_workers", {}).get("runs", {}).get("1", {})
            if one.get("cpu_us_per_event"):
                found["cloud_cpu_us_per_event"] = (one["cpu_us_per_event_less_idle"] or one["cpu_us_per_event"], name)
            if one.get("broker_bytes_per_event"):
                found["broker_bytes_per_event"] = (one["broker_bytes_per_event"], name)
            f1 = doc.get("fleets", {}).get("runs", {}).get("1", {})
            if f1.get("cpu_s_per_device"):
                found["fleet_cpu_s_per_device_day"] = (f1["cpu_s_per_device"], name)
            if f1.get("mb_per_device"):
                found["fleet_mb_per_device"] = (f1["mb_per_device"], name)
        elif suite == "stages":
            stages = doc.get("stages_us_per_event", {})
            if doc.get("cpu_us_per_event_less_idle"):
                found["cloud_cpu_us_per_event"] = (doc["cpu_us_per_event_less_idle"], name)
            replica = sum(v for k, v in stages.items() if k.startswith("index"))
            if replica:
                found["replica_cpu_us_per_event"] = (replica, name)
        elif suite == "fleet":
            cycle = doc.get("large_cycle") or {}
            if cycle.get("cpu_s_per_device"):
                found["fleet_cpu_s_per_device_day"] = (cycle["cpu_s_per_device"], name)
            if cycle.get("mb_per_device"):
                found["fleet_mb_per_device"] = (cycle["mb_per_device"], name)
        elif suite == "match":
            runs = sorted(doc.get("runs", []), key=lambda r: r.get("n_users", 0))
            edge = [a for r in runs[-1:] for url, a in r.get("adapters", {}).items() if url.startswith("edge")]
            if edge and edge[0].get("p50_ms"):
                found["match_cpu_ms"] = (edge[0]["p50_ms"], name)
        elif suite == "device" and doc.get("download_kb_per_trigger"):
            found["down_kb_per_device_day"] = (doc["download_kb_per_trigger"], name)
    costs = UnitCosts(**{k: v for k, (v, _) in found.items()})
    fields = [f for f in asdict(costs) if f not in ("sources", "fleet_job_batches")]
    return replace(costs, sources=tuple((f, found[f][1] if f in found else DOCS) for f in fields))


def model(devices: int, c: UnitCosts, a: Assumptions) -> dict[str, Any]:
    """One row of the capacity model: what `devices` devices need of each engine."""
    events_s = devices * a.events_per_device_day / DAY
    peak_events_s = events_s * a.peak_over_mean
    ingest_cores = peak_events_s * c.cloud_cpu_us_per_event * 1e-6 / a.core_utilisation
    rematch_s = devices * a.rematches_per_day / (a.rematch_window_h * 3600)
    match_cores = rematch_s * c.match_cpu_ms * 1e-3 / a.core_utilisation
    worker_cores = max(1, math.ceil(ingest_cores + match_cores))
    # every worker's replica repeats the replica part of the per-event cost
    replica_cores = peak_events_s * c.replica_cpu_us_per_event * 1e-6 / a.core_utilisation * worker_cores
    point_bytes = a.dim * 4 + a.hnsw_m * 2 * 4 + a.point_overhead_bytes
    index_gb = devices * point_bytes / 1e9
    sharded = index_gb > a.replica_budget_gb
    shards = math.ceil(index_gb / (a.qdrant_node_gb / 2)) if sharded else 0
    down_bytes_s = devices * c.down_kb_per_device_day * 1000 / DAY
    up_bytes_s = peak_events_s * c.broker_bytes_per_event
    written_mb_s = (up_bytes_s + down_bytes_s) * a.replication_factor / 1e6
    partitions = _pow2(max(8, 2 * worker_cores, math.ceil((up_bytes_s + down_bytes_s) / 1e6 / a.partition_mb_s)))
    fleet_cpu = c.fleet_cpu_s_per_device_day * a.batches_per_day / c.fleet_job_batches
    fleet_processes = math.ceil(devices * fleet_cpu / DAY / a.core_utilisation)
    return {
        "devices": devices,
        "events_per_s_mean": events_s, "events_per_s_peak": peak_events_s,
        "rematch_requests_per_s": rematch_s,
        "worker_cores_ingest": ingest_cores, "worker_cores_match": match_cores, "worker_processes": worker_cores,
        "replica_cores_if_per_worker": replica_cores,
        "broker_mb_s_in_peak": (up_bytes_s + down_bytes_s) / 1e6, "broker_mb_s_written_replicated": written_mb_s,
        "brokers": max(3, math.ceil(written_mb_s / a.broker_mb_s)), "partitions": partitions,
        "index_gb_per_replica": index_gb, "index": "Qdrant distributed mode" if sharded else "per-worker Edge replica",
        "qdrant_shards": shards, "qdrant_nodes": shards * a.qdrant_replication,
        "fleet_cpu_s_per_device_day": fleet_cpu, "fleet_processes": fleet_processes,
        "fleet_gb": devices * c.fleet_mb_per_device / 1000,
    }


def crossover(c: UnitCosts, a: Assumptions) -> int:
    """Devices (one user each) at which one index replica outgrows a worker's budget."""
    return int(a.replica_budget_gb * 1e9 / (a.dim * 4 + a.hnsw_m * 2 * 4 + a.point_overhead_bytes))


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def run(out: Path, quick: bool, sources: list[Path] | None = None) -> dict[str, Any]:
    if not sources:
        print("coda bench capacity: give at least one bench JSON with --from FILE.json", file=sys.stderr)
        raise SystemExit(2)
    docs = [(str(p), json.loads(Path(p).read_text())) for p in sources]
    costs, assumptions = unit_costs(docs), Assumptions()
    rows = [model(n, costs, assumptions) for n in DEVICES]
    result = {"unit_costs": {k: v for k, v in asdict(costs).items() if k != "sources"},
              "sources": dict(costs.sources), "assumptions": asdict(assumptions), "rows": rows,
              "replica_crossover_devices": crossover(costs, assumptions)}
    write_report(out, "capacity", result, markdown(result))
    return result


def markdown(r: dict[str, Any]) -> str:
    c, a = r["unit_costs"], r["assumptions"]
    md = "# Capacity model\n\nUnit costs (measured; source beside each):\n\n"
    md += table(["unit cost", "value", "source"], [[k, float(v), r["sources"].get(k, "")] for k, v in c.items()
                                                    if k in r["sources"]]) + "\n\n"
    md += table(["assumption", "value"], [[k, v] for k, v in a.items()]) + "\n\n"
    names = [f"{n['devices'] / 1e6:g}M" for n in r["rows"]]

    def line(label: str, key: str, fmt: str = "{:,.1f}") -> list[str]:
        return [label, *[fmt.format(n[key]) if isinstance(n[key], int | float) else str(n[key]) for n in r["rows"]]]

    rows = [
        line("events/s, daily mean", "events_per_s_mean", "{:,.0f}"),
        line("events/s, peak", "events_per_s_peak", "{:,.0f}"),
        line("re-match requests/s (in the window)", "rematch_requests_per_s", "{:,.0f}"),
        line("worker cores: ingest to the index", "worker_cores_ingest"),
        line("worker cores: re-match (KNN floor)", "worker_cores_match"),
        line("Faust worker processes (one group, 1 core each)", "worker_processes", "{:,}"),
        line("extra cores if every worker keeps a replica", "replica_cores_if_per_worker"),
        line("broker MB/s in, peak (up + stream + changelogs + down)", "broker_mb_s_in_peak", "{:,.2f}"),
        line(f"broker MB/s written × {a['replication_factor']} replicas", "broker_mb_s_written_replicated", "{:,.2f}"),
        line("Kafka brokers", "brokers", "{:,}"),
        line("partitions per co-partitioned topic", "partitions", "{:,}"),
        line("index GB per replica", "index_gb_per_replica", "{:,.1f}"),
        line("index", "index", "{}"),
        line("Qdrant shards", "qdrant_shards", "{:,}"),
        line(f"Qdrant nodes (replication {a['qdrant_replication']})", "qdrant_nodes", "{:,}"),
        line("fleet CPU s per device-day (12 batches)", "fleet_cpu_s_per_device_day", "{:.3f}"),
        line("fleet processes (simulated devices)", "fleet_processes", "{:,}"),
        line("fleet memory GB", "fleet_gb", "{:,.0f}"),
    ]
    md += table(["per component", *names], rows) + "\n\n"
    md += (f"One index replica outgrows the {a['replica_budget_gb']:g} GB a worker may give it at "
           f"{r['replica_crossover_devices']:,} users: beyond that a sharded Qdrant cluster replaces per-worker "
           "replicas.\n")
    return md
