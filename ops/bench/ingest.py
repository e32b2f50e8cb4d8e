"""`coda bench ingest`: events/s end to end through real workers, beside raw aiokafka and no-op Faust ceilings."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack

from ops.bench.common import broker_for, table, write_report
from streams.settings import Settings


def say(msg: str) -> None:
    print(f"[bench ingest] {msg}", file=sys.stderr, flush=True)


def run(out: Path, quick: bool, settings: Settings, workers: tuple[int, ...] = (1,)) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="coda-bench-") as scratch, broker_for(settings, Path(scratch)) as s:
        result = asyncio.run(_run(s, Path(scratch), quick, workers))
    rows = [[name, r["events_per_s"], r.get("seconds", 0.0), r.get("ratio_to_raw", 1.0)]
            for name, r in result["measurements"].items()]
    md = ("# bench ingest\n\nSame envelopes, same broker, one run. `pipeline-N`: up-tunnel envelopes → "
          "samples → user vectors → index replica, N worker processes (timed until every group's lag "
          "is zero). Ceilings: raw aiokafka consume + msgpack decode; a Faust agent that does "
          "nothing per message.\n\n")
    md += table(["path", "events/s", "seconds", "÷ raw"], rows) + "\n"
    write_report(out, "ingest", result, md)
    return result


async def _run(base: Settings, scratch: Path, quick: bool, worker_counts: tuple[int, ...]) -> dict[str, Any]:
    from ops.datasets import load_dataset
    from ops.replay.publish import plan_days

    users = 300 if quick else 3000
    dataset = load_dataset("synthetic", n_users=users, days=4, events_per_user=(20, 40), seed=1)
    plans = plan_days(dataset.events)
    events = sum(p.events for p in plans)
    say(f"{events:,} events from {users:,} users in {sum(len(p.by_device) for p in plans):,} envelopes")
    measurements: dict[str, dict[str, float]] = {}
    first_ns = None
    for n in worker_counts:
        ns = _namespace(base, scratch, f"w{n}")
        first_ns = first_ns or ns
        seconds = await _pipeline(ns, plans, n)
        measurements[f"pipeline-{n}"] = {"events_per_s": events / seconds, "seconds": seconds,
                                         "per_worker_events_per_s": events / seconds / n}
        say(f"pipeline with {n} worker(s): {events / seconds:,.0f} events/s")
    assert first_ns is not None
    raw_s, raw_events = await _raw_ceiling(first_ns)
    measurements["raw-aiokafka+msgpack"] = {"events_per_s": raw_events / raw_s, "seconds": raw_s}
    faust_s, messages = await _faust_noop(first_ns)
    measurements["faust-noop"] = {"events_per_s": events / faust_s, "seconds": faust_s,
                                  "messages_per_s": messages / faust_s}
    raw = measurements["raw-aiokafka+msgpack"]["events_per_s"]
    for m in measurements.values():
        m["ratio_to_raw"] = m["events_per_s"] / raw
    one = measurements.get("pipeline-1", {}).get("events_per_s")
    two = measurements.get("pipeline-2", {}).get("events_per_s")
    return {"events": events, "users": users, "measurements": measurements,
            "scaling_2_over_1": (two / one) if one and two else None,
            "targets": {"pipeline_per_worker_ratio_to_raw": 0.5, "scaling_2_over_1": 1.6}}


def _namespace(base: Settings, scratch: Path, name: str) -> Settings:
    from ops.stack.namespace import in_namespace

    return in_namespace(base.replace(state_dir=scratch), f"ingest-{int(time.time())}-{name}")


async def _pipeline(s: Settings, plans: list, workers: int) -> float:  # type: ignore[type-arg]
    from ops.replay.publish import DayPlan, Publisher
    from ops.stack.pipeline import Processes, barrier
    from streams.kafka import ensure_topics
    from streams.topics import load_topics

    topics = load_topics(s.topics_file, s.topic_prefix)
    await ensure_topics(s, topics)
    procs = Processes(s)
    try:
        for i in range(workers):
            procs.spawn("worker", str(i))
        async with Publisher(s, topics) as pub:
            warm = plans[0].by_device[0]
            await pub.up(DayPlan(plans[0].day, (("warmup-device", warm[1]),)))
            await barrier(s, topics, workers, False, procs)  # workers joined and idle
            start = time.monotonic()
            for plan in plans:
                await pub.up(plan)
            await barrier(s, topics, workers, False, procs, timeout_s=1800)
            return time.monotonic() - start
    finally:
        procs.stop()


async def _raw_ceiling(s: Settings) -> tuple[float, int]:
    from streams.topicio import read_topic
    from streams.topics import load_topics

    name = load_topics(s.topics_file, s.topic_prefix).name("up")
    start = time.monotonic()
    messages = await read_topic(s, name)
    events = sum(len(msgpack.unpackb(m.value, raw=False).get("events", ())) for m in messages)
    return time.monotonic() - start, events


async def _faust_noop(s: Settings) -> tuple[float, int]:
    from streams.app import create_app, topic
    from streams.topicio import read_topic
    from streams.topics import load_topics

    topics = load_topics(s.topics_file, s.topic_prefix)
    total = len(await read_topic(s, topics.name("up")))
    app = create_app(s.replace(app_id=f"{s.app_id}-noop"), topics)
    seen = {"n": 0, "first": 0.0, "last": 0.0}
    done = asyncio.Event()

    @app.agent(topic(app, topics, "up"))
    async def noop(stream):  # type: ignore[no-untyped-def]
        async for _ in stream:
            seen["n"] += 1
            now = time.monotonic()
            seen["first"] = seen["first"] or now
            seen["last"] = now
            if seen["n"] >= total:
                done.set()

    await app.start()
    try:
        await asyncio.wait_for(done.wait(), timeout=600)
    finally:
        await app.stop()
    return max(seen["last"] - seen["first"], 1e-6), total
