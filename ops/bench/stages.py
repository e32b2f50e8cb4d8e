"""`coda bench stages`: worker CPU per event end to end to the index, broken down per stage.

One worker runs in this process on a fixed input (a synthetic log published to the up-tunnel
by a thread of its own). Its CPU is read per thread: the Faust consumer thread (Kafka fetch),
the index thread (replica upserts and flushes), and the main thread, whose share per stage
comes from cProfile over a second, identical run (the profiler slows Python code, so it gives
shares, and the unprofiled run gives the microseconds):

- decode/validate: `CloudContext.accept` (every agent's decode and schema validation)
- sample building: `core.ingest.build_samples` and `SampleBatch.of`
- produce: `CloudContext.send` (encode + Faust send) and aiokafka's sender task
- vector fold: the user-vector agent's `fold_user` (fold, merge of the in-window days)
- changelog: `agents.context.put` / `drop` (table writes and their changelog records)
- index: the replica's follower on the main thread (fetch + decode of user vectors) plus the
  index thread
- Kafka fetch: the consumer thread; the rest of the main thread is Faust's stream machinery,
  acks, timers and the event loop.

Idle CPU (timers, polls) measured before the input is published is subtracted.
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from ops.bench.common import broker_for, table, write_report
from streams.settings import Settings

# stage → (file suffix, function name) whose cumulative main-thread time is the stage's
STAGES: dict[str, tuple[tuple[str, str], ...]] = {
    "decode/validate": (("agents/context.py", "accept"),),
    "sample building": (("core/ingest.py", "build_samples"), ("streams/schemas/messages.py", "SampleBatch.of")),
    "produce": (("agents/context.py", "send"), ("aiokafka/producer/sender.py", "_sender_routine")),
    "vector fold": (("agents/vectors.py", "fold_user"),),
    "changelog": (("agents/context.py", "put"), ("agents/context.py", "drop")),
    "index (main thread)": (("agents/worker.py", "follow_user_vectors"),),
}
HARNESS = (("ops/bench/stages.py", "_until_quiet"),)
# own time by where the code lives: the main thread's cost beside its stages
PACKAGES = (("/faust/", "Faust"), ("/mode/", "mode (Faust's services)"), ("/aiokafka/", "aiokafka"),
            ("asyncio", "asyncio event loop"), ("/msgpack/", "msgpack"), ("/agents/", "agents (ours)"),
            ("/core/", "core (ours)"), ("/streams/", "streams (ours: schemas, codec)"), ("~", "C built-ins"))


def say(msg: str) -> None:
    print(f"[bench stages] {msg}", file=sys.stderr, flush=True)


def run(out: Path, quick: bool, settings: Settings) -> dict[str, Any]:
    users, days = (150, 3) if quick else (1500, 4)
    with tempfile.TemporaryDirectory(prefix="coda-bench-stages-") as scratch, \
            broker_for(settings, Path(scratch)) as s:
        plain = asyncio.run(_run(s, Path(scratch), users, days, "plain", profile=False))
        profiled = asyncio.run(_run(s, Path(scratch), users, days, "prof", profile=True))
    result = breakdown(plain, profiled)
    result.update(users=users, days=days, events=plain["events"])
    write_report(out, "stages", result, _markdown(result))
    return result


def breakdown(plain: dict[str, Any], profiled: dict[str, Any]) -> dict[str, Any]:
    """µs per event per stage: main-thread shares from the profiled run × the unprofiled run's CPU."""
    events = plain["events"]
    main_us = plain["threads"]["main"] / events * 1e6
    shares = profiled["main_shares"]
    stages = {name: shares.get(name, 0.0) * main_us for name in STAGES}
    stages["index thread"] = plain["threads"]["index"] / events * 1e6
    stages["Kafka fetch (consumer thread)"] = plain["threads"]["consumer"] / events * 1e6
    stages["Faust, acks, event loop (rest of main)"] = max(1.0 - sum(shares.get(n, 0.0) for n in STAGES), 0.0) * main_us
    stages["other threads"] = plain["threads"]["other"] / events * 1e6
    total = plain["cpu_s"] / events * 1e6
    return {"cpu_us_per_event": total, "cpu_us_per_event_less_idle": plain["cpu_s_less_idle"] / events * 1e6,
            "events_per_s": events / plain["seconds"], "stages_us_per_event": stages,
            "main_thread_shares": shares, "top_functions": profiled["top"],
            "runs": {"plain": {k: v for k, v in plain.items() if k not in ("top",)},
                     "profiled": {k: v for k, v in profiled.items() if k not in ("top",)}},
            "targets": {"cpu_us_per_event": 40}}


async def _run(base: Settings, scratch: Path, users: int, days: int, name: str, profile: bool) -> dict[str, Any]:
    from agents.worker import build_worker
    from ops.datasets import load_dataset
    from ops.replay.publish import DayPlan, plan_days
    from ops.stack.namespace import in_namespace
    from streams.kafka import ensure_topics
    from streams.process import tune_gc

    s = in_namespace(base.replace(state_dir=scratch), f"stages-{int(time.time())}-{name}")
    plans = plan_days(load_dataset("synthetic", n_users=users, days=days, events_per_user=(20, 40), seed=1).events)
    events = sum(p.events for p in plans)
    envelopes = sum(len(p.by_device) for p in plans)
    ctx = build_worker(s, "0")
    await ensure_topics(s, ctx.topics)
    tune_gc()
    warm = plans[0].by_device[0]
    await _publish_in_thread(s, ctx.topics, [DayPlan(plans[0].day, (("warmup-device", warm[1]),))])
    await ctx.app.start()
    try:
        await _until_quiet(ctx, 1)
        before = _thread_cpu(ctx)
        idle_s = 2.0
        await asyncio.sleep(idle_s)
        idle = _thread_cpu(ctx)
        idle_per_s = (sum(idle.values()) - sum(before.values())) / idle_s
        # the main thread's CPU time, not wall time: waiting in epoll is no stage's cost
        profiler = cProfile.Profile(time.thread_time) if profile else None
        before = _thread_cpu(ctx)
        start = time.monotonic()
        if profiler:
            profiler.enable()
        publisher = asyncio.create_task(_publish_in_thread(s, ctx.topics, plans))
        publish_cpu = await publisher
        quiet_s = await _until_quiet(ctx, envelopes + 1)
        if profiler:
            profiler.disable()
        seconds = time.monotonic() - start - quiet_s
        after = _thread_cpu(ctx)
    finally:
        await ctx.app.stop()
        ctx.index.close()
    threads = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    threads["other"] = max(threads.get("other", 0.0) - publish_cpu, 0.0)  # the publisher thread is not the worker
    cpu = sum(threads.values())
    out = {"events": events, "envelopes": envelopes, "seconds": seconds, "cpu_s": cpu,
           "cpu_s_less_idle": max(cpu - idle_per_s * (seconds + quiet_s), 0.0), "idle_cpu_per_s": idle_per_s,
           "threads": threads, "profiled": profile, "load_avg": os.getloadavg()}
    if profiler:
        out["main_shares"], out["top"] = _shares(profiler)
    say(f"{name}: {events:,} events, {cpu / events * 1e6:.0f} µs CPU an event "
        f"(main {threads['main'] / events * 1e6:.0f}, consumer {threads['consumer'] / events * 1e6:.0f}, "
        f"index {threads['index'] / events * 1e6:.0f})")
    return out


async def _publish_in_thread(s: Settings, topics: Any, plans: list[Any]) -> float:
    """Publish `plans` to the up-tunnel from a thread with its own loop; returns that thread's CPU seconds."""
    from ops.replay.publish import Publisher

    async def publish() -> float:
        t0 = time.thread_time()
        async with Publisher(s, topics) as pub:
            for plan in plans:
                await pub.up(plan)
        return time.thread_time() - t0

    return await asyncio.to_thread(lambda: asyncio.run(publish()))


async def _until_quiet(ctx: Any, envelopes: int, quiet_s: float = 1.5) -> float:
    """Wait until ingest has taken `envelopes` and no stage counter moved for `quiet_s`; returns the quiet time."""
    def snapshot() -> tuple[int, ...]:
        return tuple(c.received + c.processed for c in ctx.counters.values())

    last, since = snapshot(), time.monotonic()
    while True:
        await asyncio.sleep(0.1)
        now = snapshot()
        if now != last:
            last, since = now, time.monotonic()
        elif ctx.stage("ingest").received >= envelopes and ctx.stage("index").received and \
                time.monotonic() - since >= quiet_s:
            return time.monotonic() - since


def _thread_cpu(ctx: Any) -> dict[str, float]:
    """CPU seconds per thread of this process: main, consumer (Faust's Kafka thread), index, other."""
    # Faust runs its Kafka consumer as a service in a thread of its own (mode's WorkerThread)
    names = {t.native_id: type(getattr(t, "service", t)).__name__ for t in threading.enumerate()}
    main = threading.main_thread().native_id
    index = ctx.index_pool.submit(threading.get_native_id).result()
    out = {"main": 0.0, "consumer": 0.0, "index": 0.0, "other": 0.0}
    for t in psutil.Process().threads():
        cpu = t.user_time + t.system_time
        if t.id == main:
            out["main"] += cpu
        elif t.id == index:
            out["index"] += cpu
        elif "Consumer" in names.get(t.id, ""):
            out["consumer"] += cpu
        else:
            out["other"] += cpu
    return out


def _shares(profiler: cProfile.Profile) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Each stage's share of the main thread's profiled time (the harness's own polling left out)."""
    stats = pstats.Stats(profiler)
    raw: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values())  # tottime over all functions = the thread's profiled time

    lines = {"SampleBatch.of": _first_line("SampleBatch")}

    def cum(targets: tuple[tuple[str, str], ...]) -> float:
        """Cumulative time of the named functions ("Class.method" pins the method by its line)."""
        def hit(file: str, line: int, func: str, suffix: str, name: str) -> bool:
            if not file.endswith(suffix):
                return False
            if name in lines:
                return line == lines[name]
            return func == name

        return sum(v[3] for (file, line, func), v in raw.items()
                   if any(hit(file, line, func, suffix, name) for suffix, name in targets))

    harness = cum(HARNESS)
    base = max(total - harness, 1e-9)
    shares = {name: cum(targets) / base for name, targets in STAGES.items()}
    by_package: dict[str, float] = {}
    for (file, _, _), v in raw.items():
        package = next((name for part, name in PACKAGES if part in file), "other Python")
        by_package[package] = by_package.get(package, 0.0) + v[2] / base
    shares["by_package"] = dict(sorted(by_package.items(), key=lambda kv: -kv[1]))  # type: ignore[assignment]
    top = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:25]
    listing = [{"function": f"{Path(file).name}:{line}:{func}", "calls": v[1], "tottime_share": v[2] / base,
                "cumtime_share": v[3] / base} for (file, line, func), v in top]
    return shares, listing


def _first_line(cls_name: str) -> int:
    from streams import schemas

    return getattr(schemas, cls_name).of.__func__.__code__.co_firstlineno


def _markdown(r: dict[str, Any]) -> str:
    md = (f"# bench stages\n\nOne worker in process on a fixed input ({r['events']:,} events, {r['users']:,} users, "
          f"{r['days']} days), end to end to its index replica: {r['cpu_us_per_event']:.0f} µs CPU an event "
          f"({r['cpu_us_per_event_less_idle']:.0f} less idle timers), {r['events_per_s']:,.0f} events/s. "
          "Main-thread stages are cProfile shares of a second run × the unprofiled main-thread CPU.\n\n")
    rows = [[name, us, us / r["cpu_us_per_event"]] for name, us in r["stages_us_per_event"].items()]
    md += table(["stage", "µs CPU / event", "share"], rows) + "\n\n"
    rows = [[name, share, share * r["runs"]["plain"]["threads"]["main"] / r["events"] * 1e6]
            for name, share in r["main_thread_shares"]["by_package"].items()]
    md += "Main thread, own time by where the code lives (profiled run):\n\n"
    md += table(["code", "share of main thread", "µs / event"], rows) + "\n\n"
    md += "Main thread, top functions by own time (profiled run):\n\n"
    rows = [[f["function"], f["calls"], f["tottime_share"], f["cumtime_share"]] for f in r["top_functions"][:15]]
    md += table(["function", "calls", "own share", "cumulative share"], rows) + "\n"
    return md
