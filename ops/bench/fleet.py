"""`coda bench fleet`: a daily device cycle for N devices — our fleet vs a plain loop (ceiling) vs Flower."""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from ops.bench.common import broker_for, table, write_report
from streams.settings import Settings

BATCHES = 3  # matched batches of 25 per device and day in this job (the quota allows 12)


def say(msg: str) -> None:
    print(f"[bench fleet] {msg}", file=sys.stderr, flush=True)


def run(out: Path, quick: bool, settings: Settings, fleets: tuple[int, ...] = (1,)) -> dict[str, Any]:
    sizes = (100,) if quick else (1000, 5000)
    with tempfile.TemporaryDirectory(prefix="coda-bench-fleet-") as scratch, \
            broker_for(settings, Path(scratch)) as s:
        runs = [asyncio.run(_one(s, Path(scratch) / f"n{n}", n, fleets)) for n in sizes]
    rows = []
    for r in runs:
        for name, m in r["ways"].items():
            rows.append([r["devices"], name, m.get("devices_per_s", "skipped"), m.get("mb_per_device", ""),
                         m.get("seconds", "")])
    md = ("# bench fleet\n\nThe same per-device daily job (20 events reported, then "
          f"{BATCHES} matched batches of 25 → Algorithm 2 → Algorithm 3) for N devices, three ways in one run: "
          "our fleet process through the real broker; a plain single-process loop over the same Device "
          "code (the hardware ceiling); Flower's simulation engine when `flwr[simulation]` is installed.\n\n")
    md += table(["devices", "way", "devices/s", "MB per device", "seconds"], rows) + "\n"
    result = {"runs": runs, "batches_per_device": BATCHES,
              "targets": {"fleet_over_flower": 10.0, "fleet_over_plain_loop": 0.8}}
    write_report(out, "fleet", result, md)
    return result


def _job(settings: Settings, n: int) -> tuple[list[tuple[str, list[Any]]], list[bytes]]:
    """Per device: one day's events; the matched payloads every device receives."""
    from core.features import History, event_to_sample
    from ops.datasets import load_dataset
    from ops.replay import plan_days
    from streams.schemas import pack_samples

    data = load_dataset("synthetic", n_users=n + 10, days=1, events_per_user=20, seed=7)
    plan = plan_days(data.events)[0]
    devices = [(d, list(e)) for d, e in plan.by_device[:n]]
    matched, history = [], History()
    for d, events in plan.by_device[n:]:
        for i, e in enumerate(events):
            fields = {"ts": e.ts - 1, "item_id": e.item_id, "item_tags": e.item_tags, "action": e.action, "label": e.label}
            sample, history = event_to_sample(d, fields, history, settings.features)
            matched.append(sample)
    return devices, [pack_samples(matched[25 * b: 25 * b + 25]) for b in range(BATCHES)]


async def _one(base: Settings, scratch: Path, n: int, fleets: tuple[int, ...]) -> dict[str, Any]:
    devices, payloads = _job(base, n)
    ways: dict[str, Any] = {}
    for f in fleets:
        ways[f"fleet-x{f}"] = await _fleet(base, scratch / f"fleet{f}", devices, payloads, f)
        say(f"{n} devices, {f} fleet process(es): {ways[f'fleet-x{f}']['devices_per_s']:.1f} devices/s")
    ways["plain-loop"] = await _plain_loop(base.replace(state_dir=scratch / "plain"), devices, payloads)
    say(f"{n} devices, plain loop: {ways['plain-loop']['devices_per_s']:.1f} devices/s")
    ways["flower"] = _flower(n)
    fleet = ways[f"fleet-x{fleets[0]}"]["devices_per_s"]
    return {"devices": n, "ways": ways,
            "fleet_over_plain_loop": fleet / ways["plain-loop"]["devices_per_s"],
            "fleet_over_flower": (fleet / ways["flower"]["devices_per_s"]) if "devices_per_s" in ways["flower"] else None}


async def _fleet(base: Settings, state: Path, devices: list[tuple[str, list[Any]]], payloads: list[bytes],
                 processes: int) -> dict[str, Any]:
    from core.privacy import device_pseudonym
    from ops.namespace import in_namespace
    from ops.pipeline import Processes
    from streams.kafka import consumer, ensure_topics, producer
    from streams.schemas import DeviceActions, DownBatch, DownNotice, PullRequest, decode, encode
    from streams.topics import load_topics

    s = in_namespace(base.replace(state_dir=state), f"fleet-{int(time.time())}-{processes}")
    topics = load_topics(s.topics_file, s.topic_prefix)
    await ensure_topics(s, topics)
    procs = Processes(s)
    for i in range(processes):
        procs.spawn("fleet", str(i), "--quiet")
    ps = [psutil.Process(p.pid) for p in procs.procs]
    await _joined(s, processes, procs)  # time the daily cycle, not the group join
    rss0 = sum(p.memory_info().rss for p in ps)
    pub, up = producer(s), consumer(s, topics.name("up"), auto_offset_reset="earliest", enable_auto_commit=False)
    await pub.start()
    await up.start()
    try:
        start = time.monotonic()
        for device_id, events in devices:
            key = device_pseudonym(s.pseudonym_key, device_id).encode()
            await pub.send(topics.name("actions"), encode(DeviceActions(device_id, events, events[0].ts // 86_400)), key=key)
        await pub.flush()
        answered, peak = set(), rss0
        while len(answered) < len(devices):
            procs.check()
            for records in (await up.getmany(timeout_ms=300)).values():
                for r in records:
                    msg = decode(r.value, 1 << 30)
                    if isinstance(msg, PullRequest) and msg.device_id not in answered:
                        answered.add(msg.device_id)
                        await _answer(pub, topics, s, msg, payloads, device_pseudonym, DownBatch, DownNotice, encode)
            peak = max(peak, sum(p.memory_info().rss for p in ps))
        await pub.flush()
        while sum(_fleet_counts(s, i).get("notices", 0) for i in range(processes)) < len(devices):
            procs.check()
            peak = max(peak, sum(p.memory_info().rss for p in ps))
            await asyncio.sleep(0.3)
        seconds = time.monotonic() - start
    finally:
        await up.stop()
        await pub.stop()
        procs.stop()
    return {"devices_per_s": len(devices) / seconds, "seconds": seconds, "processes": processes,
            "rss_mb_before": rss0 / 2**20, "rss_mb_peak": peak / 2**20,
            "mb_per_device": (peak - rss0) / 2**20 / len(devices)}


async def _answer(pub: Any, topics: Any, s: Settings, pull: Any, payloads: list[bytes], pseud: Any,
                  batch_cls: Any, notice_cls: Any, encode: Any) -> None:
    device = pseud(s.pseudonym_key, pull.device_id)
    day = pull.ts // 86_400
    for b, payload in enumerate(payloads):
        msg = batch_cls(device, f"{pull.request_id}-{b}", pull.request_id, day, 25, payload, of=len(payloads))
        await pub.send(topics.name("down"), encode(msg), key=device.encode())
    await pub.send(topics.name("down"), encode(notice_cls(device, pull.request_id, day, "quota", len(payloads))),
                   key=device.encode())


async def _joined(s: Settings, processes: int, procs: Any, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        procs.check()
        assigned = [_fleet_stats(s, i).get("partitions") for i in range(processes)]
        if all(assigned) and sum(len(a) for a in assigned) == 8:
            return
        await asyncio.sleep(0.3)
    raise TimeoutError("fleets did not join their consumer group")


def _fleet_stats(s: Settings, fleet_id: int) -> dict[str, Any]:
    try:
        return json.loads((s.state_dir / "fleets" / f"{fleet_id}.json").read_text())
    except (OSError, ValueError):
        return {}


def _fleet_counts(s: Settings, fleet_id: int) -> dict[str, Any]:
    return _fleet_stats(s, fleet_id).get("counts", {})


async def _plain_loop(s: Settings, devices: list[tuple[str, list[Any]]], payloads: list[bytes]) -> dict[str, Any]:
    """The same Device code called directly, one device after another: no broker, no fleet."""
    from core.privacy import device_pseudonym
    from device.runtime import Device, Runtime, configure_torch, fresh_initial
    from streams.schemas import DeviceActions, DownBatch, DownNotice

    configure_torch(s.torch_threads)
    runtime = Runtime(s, fresh_initial(s.features))
    await runtime.warm_up()
    rss0 = psutil.Process().memory_info().rss
    start = time.monotonic()
    for device_id, events in devices:
        device = Device(runtime, device_pseudonym(s.pseudonym_key, device_id), device_id)
        day = events[0].ts // 86_400
        await device.on_actions(DeviceActions(device_id, events, day))
        request = (await device.state()).request or f"plain-{device_id}"
        for b, payload in enumerate(payloads):
            await device.on_batch(DownBatch(device.pseudonym, f"{request}-{b}", request, day, 25, payload,
                                            of=len(payloads)))
        await device.on_notice(DownNotice(device.pseudonym, request, day, "quota", len(payloads)))
    seconds = time.monotonic() - start
    rss = psutil.Process().memory_info().rss
    await runtime.close()
    return {"devices_per_s": len(devices) / seconds, "seconds": seconds,
            "mb_per_device": (rss - rss0) / 2**20 / len(devices)}


def _flower(n: int) -> dict[str, Any]:
    try:
        import flwr  # noqa: F401
    except ImportError:
        return {"skipped": "flwr[simulation] not installed (pip install -e '.[bench]')"}
    return {"skipped": "Flower comparison not wired in this build"}
