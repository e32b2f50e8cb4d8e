"""Prometheus /metrics: the stats a worker and a fleet keep, and a real worker scraped during a run."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ops.replay.publish import Publisher, plan_days
from ops.stack.pipeline import Processes
from streams.kafka import ensure_topics
from streams.metrics import Metrics, endpoint_file, metrics_port
from streams.settings import Settings
from streams.topics import load_topics


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> float | None:
    for (n, ls), v in samples(text).items():
        if n == name and all(dict(ls).get(k) == x for k, x in labels.items()):
            return v
    return None


def test_worker_and_fleet_stats_become_metrics() -> None:
    """Stage counters, dead-letter reasons, lag and device accounting are exposed with labels."""
    worker = Metrics("worker", "0")
    worker.update({"ingest": {"in": 5, "processed": 4, "dead_lettered": 1, "samples": 9},
                   "dead_letter_reasons": {"bad_msgpack": 1}, "lag": 3})
    text = generate_latest(worker.registry).decode()
    assert value(text, "coda_stage_messages_total", stage="ingest", outcome="in") == 5
    assert value(text, "coda_stage_messages_total", stage="ingest", outcome="dead_lettered") == 1
    assert value(text, "coda_stage_events_total", stage="ingest", what="samples") == 9
    assert value(text, "coda_dead_letters_total", reason="bad_msgpack") == 1
    assert value(text, "coda_process_state", what="lag") == 3
    fleet = Metrics("fleet", "1")
    fleet.update({"in": 7, "processed": 7, "dead_lettered": 0, "devices_hosted": 2, "lag": 0,
                  "counts": {"in": 7, "trainings": 2, "models_kept": 1},
                  "accounting": {"totals": {"trains": 2, "train_bytes": 100}, "rss_mb": 50.0}})
    text = generate_latest(fleet.registry).decode()
    assert value(text, "coda_stage_events_total", role="fleet", what="trainings") == 2
    assert value(text, "coda_device_accounting_total", what="trains") == 2
    assert value(text, "coda_process_state", what="devices_hosted") == 2
    assert metrics_port(9300, "2") == 9302 and metrics_port(0, "2") == 0


def _scrape(state_dir: Path, role: str, ident: str, deadline: float) -> str:
    path = endpoint_file(state_dir, role, ident)
    while not path.exists():
        assert time.monotonic() < deadline, f"no {path}"
        time.sleep(0.2)
    with urllib.request.urlopen(json.loads(path.read_text())["url"], timeout=10) as reply:  # noqa: S310 - local
        return str(reply.read().decode())


async def test_a_running_worker_is_scraped(settings: Settings) -> None:
    """A `coda worker` serves /metrics while it runs: in = processed + dead-lettered, by reason."""
    topics = load_topics(settings.topics_file, settings.topic_prefix)
    await ensure_topics(settings, topics)
    events = [{"user_id": f"u{i}", "ts": 1_700_000_000 + i, "item_id": "i", "item_tags": ["t"], "action": "click"}
              for i in range(3)]
    procs = Processes(settings)
    procs.spawn("worker", "0")
    try:
        async with Publisher(settings, topics) as pub:
            for plan in plan_days(events):
                await pub.up(plan)
            await pub._producer.send_and_wait(topics.name("up"), b"\xc1 not msgpack", key=b"x")
        deadline = time.monotonic() + 240
        while True:
            text = await asyncio.to_thread(_scrape, settings.state_dir, "worker", "0", deadline)
            if value(text, "coda_stage_messages_total", stage="ingest", outcome="in") == 4:
                break
            assert time.monotonic() < deadline, text
            procs.check()
            await asyncio.sleep(0.5)
        assert value(text, "coda_stage_messages_total", stage="ingest", outcome="processed") == 3
        assert value(text, "coda_stage_messages_total", stage="ingest", outcome="dead_lettered") == 1
        assert value(text, "coda_dead_letters_total", reason="bad_msgpack") == 1
    finally:
        procs.stop()
