"""`coda bench scale`: scale-out evidence without more cores — CPU per unit of work with 1, 2 and 4 members.

On a machine with fewer cores than processes, wall-clock throughput cannot grow with the
processes; what can be measured is whether adding a member adds cost. For each group size N
this reports, for cloud workers (one Faust consumer group) and device fleets (one fleet
consumer group):

- CPU seconds per event (workers) or per device (fleets), summed over the N members for the
  measured work only (start-up and the group join are outside the window);
- CPU efficiency = CPU per unit with one member / CPU per unit with N (1.0: adding members
  costs nothing; the target is >= 0.9);
- balance: each member's partitions and its share of the work (events or devices), as
  max / mean (1.0: even);
- the wall-clock throughput and its ratio to one member, with the machine's cores named.

Then the rebalance pause: a steady probe stream (envelopes for workers, device actions for
fleets) runs while a second member joins and later leaves (SIGTERM, a clean leave); the
pause is the worst probe latency after the change minus the median before it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil

from core.sample import DAY
from ops.bench.common import Usage, broker_for, table, write_report
from streams.settings import Settings

COUNTS, QUICK_COUNTS = (1, 2, 4), (1, 2)
EFFICIENCY_TARGET = 0.9


@dataclass(frozen=True)
class Sizes:
    """How much work each group size gets."""

    users: int  # cloud: users in the synthetic log (4 days of 20-40 events each)
    days: int
    devices: int  # fleets: devices in the daily cycle
    probe_rate: float  # probes/s during the rebalance phase
    settle_s: float  # seconds of steady probes before and after each membership change


FULL = Sizes(users=1000, days=4, devices=400, probe_rate=10.0, settle_s=5.0)
QUICK = Sizes(users=120, days=2, devices=40, probe_rate=5.0, settle_s=2.0)


_T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[bench scale {time.monotonic() - _T0:5.0f} s] {msg}", file=sys.stderr, flush=True)


def run(out: Path, quick: bool, settings: Settings, sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """`sizes` overrides users and devices (a machine with more cores needs more work per member)."""
    chosen, counts = (QUICK, QUICK_COUNTS) if quick else (FULL, COUNTS)
    sizes = replace(chosen, **(sizes or {}))
    if sizes.users < 1 or sizes.devices < 1:
        raise ValueError(f"users and devices must be at least 1, got {sizes.users} and {sizes.devices}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="coda-bench-scale-") as scratch, \
            broker_for(settings, Path(scratch)) as s:
        cloud = asyncio.run(_cloud(s, Path(scratch) / "cloud", sizes, counts))
        fleets = asyncio.run(_fleets(s, Path(scratch) / "fleets", sizes, counts))
    result = {"cpus": os.cpu_count(), "counts": list(counts), "quick": quick,
              "sizes": {"users": sizes.users, "devices": sizes.devices},
              "cloud_workers": cloud, "fleets": fleets, "suite_seconds": time.monotonic() - started,
              "targets": {"cpu_efficiency": EFFICIENCY_TARGET},
              "note": (f"{os.cpu_count()} cores shared by the broker, the load generator and every member: "
                       "wall-clock ratios are bounded by the cores, CPU per unit is not")}
    write_report(out, "scale", result, _markdown(result))
    return result


# --------------------------------------------------------------------------- shared
def efficiency(runs: dict[str, dict[str, Any]], unit: str, name: str = "cpu_efficiency") -> None:
    """Add `name` (CPU per unit with 1 ÷ with N) and `wall_ratio` to each run, relative to the one-member run."""
    one = runs.get("1")
    for r in runs.values():
        r[name] = one[unit] / r[unit] if one and r[unit] else None
        rate = "events_per_s" if "events_per_s" in r else "devices_per_s"
        r["wall_ratio"] = r[rate] / one[rate] if one else None


def balance(shares: Sequence[float]) -> float | None:
    """max / mean of the members' shares: 1.0 is perfectly even."""
    mean = sum(shares) / len(shares) if shares else 0
    return max(shares) / mean if mean else None


def pause(probes: Sequence[tuple[float, float | None]], at: float, until: float,
          steady_until: float | None = None) -> dict[str, Any]:
    """Worst probe latency sent in [at, until) minus the median latency of those sent before
    `steady_until` (default `at`): the undisturbed state, not a previous change's backlog.

    `probes`: (sent, latency or None when never answered). An unanswered probe counts as
    answered at `until`.
    """
    steady_until = at if steady_until is None else steady_until
    before = [lat for sent, lat in probes if sent < steady_until and lat is not None]
    after = [lat if lat is not None else until - sent for sent, lat in probes if at <= sent < until]
    base = statistics.median(before) if before else 0.0
    worst = max(after) if after else 0.0
    return {"pause_s": max(worst - base, 0.0), "worst_latency_s": worst, "baseline_p50_s": base,
            "probes": len(after), "unanswered": sum(1 for sent, lat in probes if at <= sent < until and lat is None)}


def _terminate(proc: Any, timeout_s: float = 60.0) -> None:
    """SIGTERM one member (a clean leave); kill it if it does not go."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except Exception:  # noqa: BLE001 - still running after the timeout
        proc.kill()
        proc.wait()


async def _probe_through(procs: Any, probe: Any, sizes: Sizes, spawn: Any, holds: Any,
                         answered_all: Any) -> dict[str, float]:
    """Steady probes while one member joins and then leaves; returns when each phase began and settled.

    `holds(ident)` lists the partitions member `ident` reports holding; a join is settled when
    the new member holds some, a leave when the first member holds all 8 again. At the end it
    waits (up to a minute) until `answered_all()`.
    """
    marks: dict[str, float] = {}
    i = 0

    async def steady(seconds: float = 0.0, until: Any = None, timeout_s: float = 180.0) -> None:
        nonlocal i
        start = time.monotonic()
        while (until is not None and not until()) or time.monotonic() - start < seconds:
            if time.monotonic() - start > timeout_s:
                raise TimeoutError("the group did not settle after a membership change")
            procs.check()
            await probe(i)
            i += 1
            await asyncio.sleep(1 / sizes.probe_rate)

    await steady(sizes.settle_s)
    marks["join"] = time.monotonic()
    joined = spawn()
    await steady(until=lambda: bool(holds("1")) and len(holds("0")) < 8)
    marks["joined"] = time.monotonic()
    await steady(sizes.settle_s)
    marks["leave"] = time.monotonic()
    procs.procs.remove(joined)  # leaving is expected: `procs.check()` must not flag it
    leaving = asyncio.create_task(asyncio.to_thread(_terminate, joined))
    await steady(until=lambda: leaving.done() and len(holds("0")) == 8)
    marks["left"] = time.monotonic()
    await steady(sizes.settle_s)
    marks["end"] = time.monotonic()
    deadline = marks["end"] + 60  # late answers still count: a pause is not a loss
    while not answered_all() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    return marks


def _pauses(sent: dict[str, float], answered: dict[str, float], marks: dict[str, float], sizes: Sizes,
            probe: str) -> dict[str, Any]:
    probes = [(t, answered[k] - t if k in answered else None) for k, t in sent.items()]
    # the leave is measured against the state before the join too: the probes between the two still
    # carry the join's backlog, and their median would hide part of the leave's pause
    return {"join": {**pause(probes, marks["join"], marks["leave"]), "settled_s": marks["joined"] - marks["join"]},
            "leave": {**pause(probes, marks["leave"], marks["end"], steady_until=marks["join"]),
                      "settled_s": marks["left"] - marks["leave"]},
            "probe_rate_per_s": sizes.probe_rate, "probe": probe}


async def _listen(s: Settings, topics: Any, topic: str, key_of: Any, sent: dict[str, float],
                  answered: dict[str, float]) -> tuple[Any, asyncio.Task[None]]:
    """Read `topic` from its end; the first record whose `key_of` is a sent probe answers it."""
    from aiokafka import TopicPartition

    from streams.kafka import consumer
    from streams.schemas import decode

    reader = consumer(s, enable_auto_commit=False)
    await reader.start()
    parts = [TopicPartition(topics.name(topic), p) for p in range(topics[topic].partitions)]
    reader.assign(parts)
    await reader.seek_to_end(*parts)

    async def listen() -> None:
        while True:
            for records in (await reader.getmany(timeout_ms=100)).values():
                for r in records:
                    key = key_of(decode(r.value, 1 << 30))
                    if key in sent and key not in answered:
                        answered[key] = time.monotonic()

    return reader, asyncio.create_task(listen())


# --------------------------------------------------------------------------- cloud workers
async def _cloud(base: Settings, scratch: Path, sizes: Sizes, counts: Sequence[int]) -> dict[str, Any]:
    from ops.datasets import load_dataset
    from ops.replay.publish import plan_days

    data = load_dataset("synthetic", n_users=sizes.users, days=sizes.days, events_per_user=(20, 40), seed=1)
    plans = plan_days(data.events)
    events = sum(p.events for p in plans)
    envelopes = sum(len(p.by_device) for p in plans)
    say(f"cloud: {events:,} events in {envelopes:,} envelopes from {sizes.users:,} users")
    runs = {}
    for n in counts:
        runs[str(n)] = await _cloud_run(_namespace(base, scratch, f"w{n}"), plans, events, n, sizes if n == 1 else None)
        r = runs[str(n)]
        say(f"{n} worker(s): {r['cpu_us_per_event']:.0f} us CPU an event, {r['events_per_s']:,.0f} events/s, "
            f"events by member {r['events_by_member']}")
    efficiency(runs, "cpu_us_per_event")
    efficiency(runs, "cpu_us_per_event_less_idle", "cpu_efficiency_less_idle")
    rebalance = runs["1"].pop("rebalance")
    return {"events": events, "envelopes": envelopes, "users": sizes.users, "runs": runs, "rebalance": rebalance}


def _namespace(base: Settings, scratch: Path, name: str) -> Settings:
    from ops.stack.namespace import in_namespace

    return in_namespace(base.replace(state_dir=scratch), f"scale-{int(time.time())}-{name}")


def _worker_stats(s: Settings, ident: str) -> dict[str, Any]:
    from agents.worker import worker_dir

    try:
        return json.loads((worker_dir(s, ident) / "stats.json").read_text())
    except (OSError, ValueError):
        return {}


async def _worker_stats_settled(s: Settings, idents: Sequence[str], events: int, timeout_s: float = 10) -> list[dict]:
    """Each worker's stats file once their ingest counts add up to `events` envelopes' worth (written each second)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = [_worker_stats(s, i) for i in idents]
        if sum(st.get("ingest", {}).get("processed", 0) for st in stats) >= events or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.5)


async def _cloud_run(s: Settings, plans: list[Any], events: int, workers: int,
                     rebalance: Sizes | None = None) -> dict[str, Any]:
    from ops.replay.publish import DayPlan, Publisher
    from ops.stack.pipeline import Processes, barrier
    from streams.kafka import ensure_topics
    from streams.topics import load_topics

    topics = load_topics(s.topics_file, s.topic_prefix)
    await ensure_topics(s, topics)
    procs = Processes(s)
    idents = [str(i) for i in range(workers)]
    try:
        for i in idents:
            procs.spawn("worker", i)
        async with Publisher(s, topics) as pub:
            warm = plans[0].by_device[0]
            await pub.up(DayPlan(plans[0].day, (("warmup-device", warm[1]),)))
            await barrier(s, topics, workers, False, procs)  # joined, recovered and idle
            usage = Usage([psutil.Process(p.pid) for p in procs.procs])
            idle_s = 2.0
            usage.start()
            await asyncio.sleep(idle_s)
            idle_cpu_per_s = (usage.cpu() - usage.cpu0) / idle_s / workers
            before = await _worker_stats_settled(s, idents, 1)
            usage.start()
            start = time.monotonic()
            for plan in plans:
                await pub.up(plan)
            await barrier(s, topics, workers, False, procs, timeout_s=1800)
            seconds = time.monotonic() - start
            cpu = usage.cpu() - usage.cpu0
            envelopes = sum(len(p.by_device) for p in plans) + 1
            after = await _worker_stats_settled(s, idents, envelopes)
            members = [a.get("partitions") or [] for a in after]
            if rebalance is not None:
                say("cloud: rebalance pause (a worker joins, then leaves)")
                pauses = await _cloud_rebalance(s, topics, pub, procs, plans, rebalance)
    finally:
        procs.stop()
    wire = await _topic_bytes(s) if workers == 1 else {}
    by_member = [a.get("ingest", {}).get("processed", 0) - b.get("ingest", {}).get("processed", 0)
                 for a, b in zip(after, before, strict=True)]
    vectors = [a.get("vectors", {}).get("processed", 0) - b.get("vectors", {}).get("processed", 0)
               for a, b in zip(after, before, strict=True)]
    # every worker keeps a replica of the index: each one reads every user vector
    replica = [a.get("index", {}).get("in", 0) - b.get("index", {}).get("in", 0) for a, b in zip(after, before, strict=True)]
    # the barrier's quiet polls leave the members idle for a while; that idle CPU is not per-event cost
    idle = idle_cpu_per_s * workers * seconds
    return {**({"rebalance": pauses} if rebalance is not None else {}),
            "workers": workers, "seconds": seconds, "events_per_s": events / seconds,
            "cpu_s": cpu, "cpu_us_per_event": cpu / events * 1e6,
            "idle_cpu_s_per_member_s": idle_cpu_per_s,
            "cpu_us_per_event_less_idle": max(cpu - idle, 0.0) / events * 1e6,
            "envelopes_by_member": by_member, "events_by_member": by_member,
            "sample_batches_by_member": vectors, "vectors_into_replica_by_member": replica,
            "partitions_by_member": members, "balance": balance(by_member),
            "partition_balance": balance([len(p) for p in members]) if members else None,
            **({"broker_bytes_by_topic": wire, "broker_bytes_per_event": sum(wire.values()) / events} if wire else {})}


async def _topic_bytes(s: Settings) -> dict[str, int]:
    """Key + value bytes written to each of the namespace's topics (stream topics and table changelogs)."""
    from streams.kafka import admin
    from streams.topicio import read_topic

    client = await admin(s)
    try:
        names = sorted(n for n in await client.list_topics() if n.startswith((s.topic_prefix, s.app_id)))
    finally:
        await client.close()
    out = {}
    for name in names:
        records = await read_topic(s, name)
        short = name.removeprefix(s.topic_prefix).removeprefix(s.app_id).lstrip("-.")
        out[short] = sum(len(m.value or b"") + len(m.key or b"") for m in records)
    return out


async def _cloud_rebalance(s: Settings, topics: Any, pub: Any, procs: Any, plans: list[Any],
                           sizes: Sizes) -> dict[str, Any]:
    """On the running one-worker group (with its state): a second worker joins, then leaves."""
    from core.privacy import user_pseudonym
    from streams.schemas import SampleBatch, UpEnvelope

    template = [e for e in plans[0].by_device[0][1] if e.action in ("impression", "click")][:5]
    sent: dict[str, float] = {}
    answered: dict[str, float] = {}
    reader, listener = await _listen(s, topics, "samples", lambda m: m.user if isinstance(m, SampleBatch) else None,
                                     sent, answered)

    async def probe(i: int) -> None:
        user = f"probe-user-{i}"
        events = [e.__class__(user, e.ts, e.item_id, e.item_tags, e.action, e.profile, e.label) for e in template]
        sent[user_pseudonym(s.pseudonym_key, user)] = time.monotonic()
        await pub.send("up", f"probe-device-{i}".encode(), UpEnvelope(f"probe-device-{i}", events, events[-1].ts))
        await pub._producer.flush()

    try:
        marks = await _probe_through(procs, probe, sizes, lambda: procs.spawn("worker", "1"),
                                     lambda ident: _worker_stats(s, ident).get("partitions") or [],
                                     lambda: len(answered) == len(sent))
    finally:
        listener.cancel()
        await reader.stop()
    return _pauses(sent, answered, marks, sizes, "an up-tunnel envelope → its SampleBatch on `samples`")


# --------------------------------------------------------------------------- fleets
async def _fleets(base: Settings, scratch: Path, sizes: Sizes, counts: Sequence[int]) -> dict[str, Any]:
    from ops.bench import fleet

    devices, payloads = fleet._job(base, sizes.devices)
    probes, _ = fleet._job(base, int(sizes.probe_rate * 150) + 100)  # fresh devices: one per probe
    probes = [(f"probe-{d}", e) for d, e in probes]
    runs = {}
    rebalance: dict[str, Any] = {}
    for n in counts:
        async def then(s: Settings, topics: Any, procs: Any) -> dict[str, Any]:
            say("fleets: rebalance pause (a fleet joins, then leaves)")
            return await _fleet_rebalance(s, topics, procs, probes, sizes)

        r = await fleet._fleet(base, scratch / f"f{n}", devices, payloads, n, then if n == 1 else None)
        rebalance = r.pop("then", rebalance)
        members = r.pop("members")
        hosted = [m.get("devices_hosted", 0) for m in members]
        runs[str(n)] = {**r, "cpu_ms_per_device": r["cpu_s_per_device"] * 1000,
                        "devices_by_member": hosted, "partitions_by_member": [m.get("partitions") for m in members],
                        "balance": balance(hosted),
                        "partition_balance": balance([len(m.get("partitions") or ()) for m in members])}
        say(f"{n} fleet(s): {runs[str(n)]['cpu_ms_per_device']:.0f} ms CPU a device, "
            f"{r['devices_per_s']:.1f} devices/s, devices by member {hosted}")
    efficiency(runs, "cpu_ms_per_device")
    return {"devices": sizes.devices, "runs": runs, "rebalance": rebalance}


async def _fleet_rebalance(s: Settings, topics: Any, procs: Any, devices: Any, sizes: Sizes) -> dict[str, Any]:
    """On the running one-fleet group (its devices hosted): a second fleet joins, then leaves."""
    from core.privacy import device_pseudonym
    from ops.bench import fleet
    from streams.kafka import producer
    from streams.schemas import DeviceActions, PullRequest, encode

    sent: dict[str, float] = {}
    answered: dict[str, float] = {}
    pub = producer(s)
    await pub.start()
    reader, listener = await _listen(s, topics, "up", lambda m: m.device_id if isinstance(m, PullRequest) else None,
                                     sent, answered)

    async def probe(i: int) -> None:
        device_id, events = devices[i % len(devices)]
        if device_id in sent:
            return
        key = device_pseudonym(s.pseudonym_key, device_id).encode()
        sent[device_id] = time.monotonic()
        await pub.send(topics.name("actions"), encode(DeviceActions(device_id, events, events[0].ts // DAY)), key=key)
        await pub.flush()

    try:
        marks = await _probe_through(procs, probe, sizes, lambda: procs.spawn("fleet", "1", "--quiet"),
                                     lambda ident: fleet._fleet_stats(s, int(ident)).get("partitions") or [],
                                     lambda: len(answered) == len(sent))
    finally:
        listener.cancel()
        await reader.stop()
        await pub.stop()
    return _pauses(sent, answered, marks, sizes, "a new device's actions → its first pull request")


# --------------------------------------------------------------------------- report
def _markdown(r: dict[str, Any]) -> str:
    cpus = r["cpus"]
    md = (f"# bench scale\n\nMachine: {cpus} cores, shared by the broker, the load generator and every member "
          "under test. CPU per unit is summed over the members for the measured work; efficiency = CPU per unit "
          "with 1 member ÷ CPU per unit with N (target ≥ 0.9). Balance = the busiest member's share ÷ the mean "
          f"(1.0 is even). Wall ratio = throughput with N ÷ with 1, on {cpus} cores.\n\n")
    cloud, fleets = r["cloud_workers"], r["fleets"]
    rows = [[f"{n} worker(s)", w["cpu_us_per_event"], w["cpu_us_per_event_less_idle"], w["cpu_efficiency"],
             w["cpu_efficiency_less_idle"],
             w["events_per_s"], w["wall_ratio"], w["balance"] or "—",
             " ".join(str(len(p)) for p in w["partitions_by_member"]) or "—"] for n, w in cloud["runs"].items()]
    md += f"## Cloud workers ({cloud['events']:,} events, {cloud['users']:,} users)\n\n"
    md += table(["members", "CPU µs / event", "less idle", "CPU efficiency", "less idle", "events/s", "wall ratio",
                 "work balance", "partitions of `up` each"], rows) + "\n\n"
    rows = [[f"{n} fleet(s)", f["cpu_ms_per_device"], f["cpu_efficiency"], f["devices_per_s"], f["wall_ratio"],
             f["balance"] or "—", " ".join(str(len(p or ())) for p in f["partitions_by_member"])]
            for n, f in fleets["runs"].items()]
    md += f"## Device fleets ({fleets['devices']:,} devices, one daily cycle)\n\n"
    md += table(["members", "CPU ms / device", "CPU efficiency", "devices/s", "wall ratio", "device balance",
                 "partitions each"], rows) + "\n\n"
    rows = [[who, change, p["pause_s"], p["worst_latency_s"], p["baseline_p50_s"], p["settled_s"], p["unanswered"]]
            for who, group in (("workers", cloud), ("fleets", fleets))
            for change, p in (("join", group["rebalance"]["join"]), ("leave", group["rebalance"]["leave"]))]
    md += "## Rebalance pause (1 → 2 members and back, under a steady probe stream)\n\n"
    md += table(["group", "change", "pause s", "worst probe latency s", "probe p50 before s",
                 "settled after s (incl. process start)", "unanswered"], rows)
    return md + "\n"
