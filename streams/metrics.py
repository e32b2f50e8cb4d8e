"""Prometheus `/metrics` for worker and fleet processes: the counters their stats already keep.

The process hands its latest stats dict to `Metrics.update` from its own loop (where the
counters live); a scrape, served from prometheus-client's thread, only reads that snapshot.
The port actually bound is written to `<state dir>/metrics/<role>-<id>.json`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

STAGE_KEYS = ("in", "processed", "dead_lettered")


def metrics_port(base: int, ident: str) -> int:
    """`base` + the process's numeric id (worker 0 → base, worker 1 → base + 1); 0: a free port."""
    return base + int(ident) if base and ident.isdigit() else base


def endpoint_file(state_dir: Path, role: str, ident: str) -> Path:
    return state_dir / "metrics" / f"{role}-{ident}.json"


class StatsCollector(Collector):
    """Turns a worker's or fleet's stats dict into Prometheus families at scrape time."""

    def __init__(self, role: str, ident: str) -> None:
        self.role, self.ident = role, ident
        self.snapshot: Mapping[str, Any] = {}

    def collect(self) -> Iterator[Metric]:
        stats, labels = self.snapshot, [self.role, self.ident]
        messages = CounterMetricFamily("coda_stage_messages", "messages per stage: in = processed + dead_lettered",
                                       labels=["role", "process", "stage", "outcome"])
        events = CounterMetricFamily("coda_stage_events", "other things each stage counts (samples, pulls, trainings…)",
                                     labels=["role", "process", "stage", "what"])
        letters = CounterMetricFamily("coda_dead_letters", "dead letters by reason", labels=["role", "process", "reason"])
        gauges = GaugeMetricFamily("coda_process_state", "current values: lag, in flight, devices hosted, memory",
                                   labels=["role", "process", "what"])
        devices = CounterMetricFamily("coda_device_accounting", "device work done (filter/train rounds, bytes)",
                                      labels=["role", "process", "what"])
        stages = {"fleet": stats} if self.role == "fleet" else {
            k: v for k, v in stats.items() if isinstance(v, dict) and set(STAGE_KEYS) <= set(v)}
        for stage, c in stages.items():
            for outcome in STAGE_KEYS:
                messages.add_metric([*labels, stage, outcome], float(c.get(outcome, 0)))
        for stage, c in stages.items():
            extra = c.get("counts", {}) if self.role == "fleet" else c
            for what, n in extra.items():
                if what not in STAGE_KEYS and isinstance(n, int | float) and not isinstance(n, bool):
                    events.add_metric([*labels, stage, what], float(n))
        for reason, n in stats.get("dead_letter_reasons", {}).items():
            letters.add_metric([*labels, reason], float(n))
        for what in ("lag", "in_flight", "devices_hosted"):
            if isinstance(stats.get(what), int | float):
                gauges.add_metric([*labels, what], float(stats[what]))
        accounting = stats.get("accounting", {})
        for what, n in accounting.get("totals", {}).items():
            devices.add_metric([*labels, what], float(n))
        if isinstance(accounting.get("rss_mb"), int | float):
            gauges.add_metric([*labels, "rss_mb"], float(accounting["rss_mb"]))
        yield from (messages, events, letters, gauges, devices)


class Metrics:
    """One process's `/metrics` endpoint."""

    def __init__(self, role: str, ident: str) -> None:
        self.collector = StatsCollector(role, ident)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.port = 0

    def update(self, stats: Mapping[str, Any]) -> None:
        self.collector.snapshot = stats  # one reference swap: a scrape sees a whole snapshot

    def start(self, host: str, port: int, state_dir: Path) -> int:
        """Serve on host:port (0: a free port) in a daemon thread; record the bound port; return it."""
        from prometheus_client import start_http_server

        server, _ = start_http_server(port, addr=host, registry=self.registry)
        self.port = int(server.server_port)
        path = endpoint_file(state_dir, self.collector.role, self.collector.ident)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"url": f"http://{host}:{self.port}/metrics", "pid": os.getpid()}))
        os.replace(tmp, path)
        return self.port


async def consumer_lag(consumer: Any) -> int | None:
    """Records behind the last fetched high watermark, summed over the consumer's assigned partitions.

    Works for an aiokafka consumer and Faust's alike (`assignment`, `highwater`, `position`);
    None while nothing is assigned or the consumer is between assignments.
    """
    try:
        assigned = list(consumer.assignment())
        total = 0
        for tp in assigned:
            high, position = consumer.highwater(tp), await consumer.position(tp)
            if high is not None and position is not None:
                total += max(0, high - position)
        return total if assigned else None
    except Exception:  # noqa: BLE001 - a rebalance can pull a partition away mid-loop; the next tick retries
        return None
