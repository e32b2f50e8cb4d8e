"""`coda bench e2e`: pull → batch latency through the real cloud, and a full daily cycle of a fleet."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from core.sample import DAY
from ops.bench.common import broker_for, percentiles, table, write_report
from streams.settings import Settings


def say(msg: str) -> None:
    print(f"[bench e2e] {msg}", file=sys.stderr, flush=True)


def run(out: Path, quick: bool, settings: Settings) -> dict[str, Any]:
    users, rate, seconds = (150, 5.0, 8.0) if quick else (1000, 10.0, 30.0)
    with tempfile.TemporaryDirectory(prefix="coda-bench-e2e-") as scratch, \
            broker_for(settings, Path(scratch)) as s:
        result = asyncio.run(_run(s, Path(scratch), users, rate, seconds))
    lat, cycle = result["pull_to_batch_ms"], result["daily_cycle"]
    rows = [["pull → first batch on the device's partition, ms", lat.get("p50"), lat.get("p99"), lat.get("n")],
            ["daily cycle (actions → pulls → batches → filter → train), s", cycle["seconds"], "",
             cycle["devices"]]]
    md = (f"# bench e2e\n\n{users} users; one cloud worker, one fleet. Latency: pull requests at a steady "
          f"{rate:g}/s for {seconds:g} s, from the up-tunnel send to the answer on the down-tunnel. Daily "
          "cycle: one event-time day for every device, from publishing its actions to every group's lag "
          "being zero after the end-of-day tick.\n\n")
    md += table(["figure", "p50 / value", "p99", "n"], rows) + "\n\n"
    md += (f"Daily cycle: {cycle['devices_per_s']:.1f} devices/s, fleet RSS {cycle.get('fleet_rss_mb')} MB "
           f"({cycle.get('mb_per_device')} MB per hosted device).\n")
    result["targets"] = {"pull_to_batch_p99_ms": 500}
    write_report(out, "e2e", result, md)
    return result


async def _run(base: Settings, scratch: Path, users: int, rate: float, seconds: float) -> dict[str, Any]:
    from agents.globalmodel import train_and_publish
    from ops.datasets import load_dataset
    from ops.replay.publish import Publisher, plan_days
    from ops.stack.namespace import in_namespace
    from ops.stack.pipeline import Processes, barrier
    from streams.kafka import ensure_topics
    from streams.topics import load_topics

    s = in_namespace(base.replace(state_dir=scratch), f"e2e-{int(time.time())}").replace(pull_trigger="day_end")
    topics = load_topics(s.topics_file, s.topic_prefix)
    await ensure_topics(s, topics)
    plans = plan_days(load_dataset("synthetic", n_users=users, days=4, events_per_user=(12, 30), seed=2).events)
    procs = Processes(s)
    try:
        procs.spawn("worker", "0")
        async with Publisher(s, topics) as pub:
            for plan in plans[:-1]:
                await pub.up(plan)
                await barrier(s, topics, 1, False, procs)
                await pub.day_end("samples", plan.day)
                await barrier(s, topics, 1, False, procs)
            say("history indexed; measuring pull latency")
            latency = await _latency(s, topics, pub, plans[-2], rate, seconds)
            await train_and_publish(s, None, epochs=1, seed=0)
            procs.spawn("fleet", "0", "--quiet")
            await barrier(s, topics, 1, True, procs)
            say("measuring a daily cycle")
            cycle = await _daily_cycle(s, topics, pub, plans[-1], procs)
    finally:
        procs.stop()
    return {"users": users, "rate_per_s": rate, "pull_to_batch_ms": percentiles(latency), "daily_cycle": cycle}


async def _latency(s: Settings, topics: Any, pub: Any, plan: Any, rate: float, seconds: float) -> list[float]:
    from aiokafka import TopicPartition

    from streams.kafka import consumer
    from streams.schemas import DownBatch, DownNotice, PullRequest, decode

    name = topics.name("down")
    reader = consumer(s, enable_auto_commit=False)
    await reader.start()
    parts = [TopicPartition(name, p) for p in range(topics["down"].partitions)]
    reader.assign(parts)
    await reader.seek_to_end(*parts)
    sent: dict[str, float] = {}
    latencies: list[float] = []

    async def listen() -> None:
        while True:
            for records in (await reader.getmany(timeout_ms=100)).values():
                for r in records:
                    msg = decode(r.value, 1 << 30)
                    if isinstance(msg, DownBatch | DownNotice) and msg.request_id in sent:
                        latencies.append((time.monotonic() - sent.pop(msg.request_id)) * 1000)

    listener = asyncio.create_task(listen())
    devices = list(plan.by_device)
    ts = plan.day * DAY + DAY - 1
    for i in range(int(rate * seconds)):
        device, events = devices[i % len(devices)]
        request = PullRequest(device, events[0].user_id, ts, f"lat-{i}", 1)
        sent[request.request_id] = time.monotonic()
        await pub.send("up", device.encode(), request)
        await pub.flush()
        await asyncio.sleep(1 / rate)
    deadline = time.monotonic() + 10
    while sent and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    listener.cancel()
    await reader.stop()
    return latencies


async def _daily_cycle(s: Settings, topics: Any, pub: Any, plan: Any, procs: Any) -> dict[str, Any]:
    from ops.stack.pipeline import barrier

    start = time.monotonic()
    await pub.actions(plan)
    await barrier(s, topics, 1, True, procs)
    await pub.day_end("samples", plan.day)
    await pub.day_end("actions", plan.day)
    await barrier(s, topics, 1, True, procs)
    seconds = time.monotonic() - start
    await asyncio.sleep(2.5)  # the fleet's stats file
    stats = json.loads((s.state_dir / "fleets" / "0.json").read_text())
    hosted = stats.get("devices_hosted") or len(plan.by_device)
    rss = stats.get("accounting", {}).get("rss_mb")
    return {"devices": len(plan.by_device), "seconds": seconds, "devices_per_s": len(plan.by_device) / seconds,
            "fleet_rss_mb": rss, "mb_per_device": round(rss / hosted, 3) if rss else None,
            "trainings": stats.get("counts", {}).get("trainings"), "batches": stats.get("counts", {}).get("batches")}
