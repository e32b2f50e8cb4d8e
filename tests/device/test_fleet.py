"""The device fleet against the real embedded broker: actions in, batches filtered and trained, up out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from samplegen import DAY, START, make_events, make_samples

from core.features import History, event_to_sample
from core.models import DIN, state_to_bytes
from core.privacy import device_pseudonym
from core.sample import Sample
from device.fleet import Fleet
from device.initialmodel import initial_model_file
from streams.kafka import consumer, ensure_topics, producer
from streams.schemas import (
    DayEnd,
    DeadLetter,
    DeviceActions,
    DownBatch,
    DownNotice,
    GlobalModel,
    PullRequest,
    UpEnvelope,
    decode,
    encode,
    pack_samples,
)
from streams.settings import Settings
from streams.topics import Topics, load_topics

DEVICES = [f"dev-u{i}" for i in range(3)]


async def wait_for(
    check: Callable[[], Awaitable[bool] | bool], timeout_s: float = 30.0, what: str = ""
) -> None:
    """Poll `check` every 50 ms until true, or fail naming `what`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        result = check()
        if await result if isinstance(result, Awaitable) else result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Tail:
    """Reads a topic from the beginning, accumulating decoded records."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.client = consumer(settings, name, auto_offset_reset="earliest", enable_auto_commit=False)
        self.records: list[tuple[bytes, Any]] = []

    async def __aenter__(self) -> Tail:
        await self.client.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.stop()

    async def until(self, check: Callable[[list[tuple[bytes, Any]]], bool], timeout_s: float = 30.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not check(self.records):
            assert (
                asyncio.get_running_loop().time() < deadline
            ), f"timed out; have {len(self.records)} records"
            for records in (await self.client.getmany(timeout_ms=200)).values():
                self.records.extend((r.key, decode(r.value, 100_000_000)) for r in records)

    def of(self, kind: type) -> list[tuple[bytes, Any]]:
        return [(k, v) for k, v in self.records if isinstance(v, kind)]


def matched_for(n: int, day: int) -> list[Sample]:
    """Neighbour-like samples: same item/tag pool as the devices' users."""
    out, history = [], History()
    for i, e in enumerate(make_events("neighbour", n, day, seed=99)):
        fields = {"ts": e.ts - i, "item_id": e.item_id, "item_tags": e.item_tags, "action": e.action}
        sample, history = event_to_sample("neighbour", fields, history, Settings().features)
        out.append(sample)
    return out


async def publish_global_models(settings: Settings, topics: Topics) -> bytes:
    """Two global models; the newer (by created_ts, published first) must win."""
    space = settings.features
    newest = state_to_bytes(DIN(space, seed=5))
    p = producer(settings)
    await p.start()
    try:
        for version, ts, weights in (("g2", 2000, newest), ("g1", 1000, state_to_bytes(DIN(space, seed=4)))):
            await p.send_and_wait(
                topics.name("models"), encode(GlobalModel(version, ts, weights)), key=version.encode()
            )
    finally:
        await p.stop()
    return newest


async def test_fleet_filters_trains_serves_and_dead_letters(settings: Settings) -> None:
    """3 devices: actions → envelopes + pulls on up; answered batches → filter, train; junk dead-lettered."""
    topics = load_topics(prefix=settings.topic_prefix)
    await ensure_topics(settings, topics)
    newest = await publish_global_models(settings, topics)
    fleet = Fleet(settings, "fleet-a", topics)
    await fleet.start()
    assert fleet.runtime is not None and fleet.runtime.initial.version == initial_model_file(newest).version
    key = settings.pseudonym_key
    pseudonyms = {d: device_pseudonym(key, d) for d in DEVICES}
    p = producer(settings)
    await p.start()
    try:
        async with (
            Tail(settings, topics.name("up")) as up,
            Tail(settings, topics.name("dead-letters")) as dead,
        ):
            for i, d in enumerate(DEVICES):
                for day in (0, 1):
                    actions = DeviceActions(d, make_events(f"u{i}", 40, day, seed=i), START // DAY + day)
                    await p.send(topics.name("actions"), encode(actions), key=pseudonyms[d].encode())
            today = START // DAY + 1  # answer the pulls of the second day, once every device sent one

            def pulled_today(r: list) -> set:  # type: ignore[type-arg]
                return {k for k, v in r if isinstance(v, PullRequest) and v.ts // DAY == today}

            await up.until(lambda r: len(pulled_today(r)) == 3)
            assert {k.decode() for k, _ in up.of(UpEnvelope)} == set(DEVICES)  # key: raw device id
            pulls = {v.device_id: v for _, v in up.of(PullRequest) if v.ts // DAY == today}
            matched = matched_for(300, 1)
            for d, pull in pulls.items():
                dev = pseudonyms[d]
                for b in range(12):
                    chunk = matched[25 * b : 25 * b + 25]
                    down = DownBatch(
                        dev,
                        f"{pull.request_id}-{b}",
                        pull.request_id,
                        pull.ts // DAY,
                        len(chunk),
                        pack_samples(chunk),
                        of=12,
                    )
                    await p.send(topics.name("down"), encode(down), key=dev.encode())
                await p.send(
                    topics.name("down"),
                    encode(DownNotice(dev, pull.request_id, pull.ts // DAY, "quota", 12)),
                    key=dev.encode(),
                )
            first, second = pseudonyms[DEVICES[0]], pseudonyms[DEVICES[1]]
            bad = [
                (b"\x93garbage", first),  # undecodable
                (
                    encode(DownBatch(second, "x1", "r", 1, 1, pack_samples(make_samples(1)))),
                    first,
                ),  # wrong device
                (encode(DownBatch(first, "x2", "r", 1, 3, b"not a payload")), first),  # garbled payload
                (
                    encode(DownBatch("ffff", "x3", "r", 1, 1, pack_samples(make_samples(1)))),
                    "ffff",
                ),  # unknown
            ]
            for raw, k in bad:
                await p.send(topics.name("down"), raw, key=k.encode())
            redelivered = DownBatch(
                first,
                f"{pulls[DEVICES[0]].request_id}-0",
                pulls[DEVICES[0]].request_id,
                START // DAY + 1,
                25,
                pack_samples(matched[:25]),
                of=12,
            )
            await p.send(topics.name("down"), encode(redelivered), key=first.encode())
            await p.flush()

            await wait_for(
                lambda: fleet.counts["notices"] == 3
                and fleet.counts["duplicates"] == 1
                and fleet.counts["dead_lettered"] == 4,
                what="batches, notices and dead letters",
            )
            await dead.until(lambda r: len(r) == 4)
            letters = [v for _, v in dead.records]
            assert all(
                isinstance(v, DeadLetter) and v.topic == topics.name("down") and v.offset >= 0
                for v in letters
            )
            assert sorted(v.reason for v in letters) == [
                "bad_msgpack",
                "bad_payload",
                "unknown_device",
                "wrong_device",
            ]
            stats = fleet.stats()
            assert stats["in"] == stats["processed"] + stats["dead_lettered"]
            assert stats["devices_hosted"] == 3 and stats["counts"]["batches"] == 36
            assert stats["counts"]["trainings"] >= 3  # on the notice, and also at 100 filtered if reached
            assert stats["accounting"]["round"]["n"] == stats["counts"]["trainings"]
            assert stats["accounting"]["round"]["bytes_mean"] > 0

            for d in DEVICES:
                device = fleet.device(pseudonyms[d])
                assert device is not None
                scores = await device.predict(
                    [{"ts": START + 2 * DAY, "item_id": "item3", "item_tags": ["tag3"]}]
                )
                assert scores.shape == (1,) and 0.0 < float(scores[0]) < 1.0
                st = await device.state()
                assert (st.stopped, st.used, st.trains >= 1) == (True, 12, True), (d, st)

            p2 = producer(settings)
            await p2.start()
            for part in range(topics["actions"].partitions):
                await p2.send(topics.name("actions"), encode(DayEnd(START // DAY + 1)), partition=part)
            await p2.stop()
            await wait_for(lambda: fleet.counts["day_end"] == topics["actions"].partitions, what="day ends")
            await wait_for(fleet.drained, what="fleet drained")
            assert fleet.idle()
    finally:
        await p.stop()
        await fleet.stop()
    saved = json.loads((settings.state_dir / "fleets" / "fleet-a.json").read_text())
    assert saved["processed"] == fleet.counts["processed"] and saved["in_flight"] == 0


async def test_two_fleets_split_the_devices_by_partition(settings: Settings) -> None:
    """Two processes of one group: range assignment gives each the same partitions of actions and down."""
    topics = load_topics(prefix=settings.topic_prefix)
    await ensure_topics(settings, topics)
    fleets = [Fleet(settings, f"fleet-{i}", topics) for i in range(2)]
    await asyncio.gather(*(f.start() for f in fleets))  # together: one join round instead of two
    p = producer(settings)
    await p.start()
    try:

        def split() -> bool:
            parts = [{(tp.topic, tp.partition) for tp in f._assigned} for f in fleets]
            return all(parts) and not parts[0] & parts[1] and len(parts[0] | parts[1]) == 16

        await wait_for(split, 45, "both fleets assigned")
        for fleet in fleets:
            by_topic: dict[str, set[int]] = {}
            for tp in fleet._assigned:
                by_topic.setdefault(tp.topic, set()).add(tp.partition)
            assert by_topic[topics.name("actions")] == by_topic[topics.name("down")]
        ids = [f"dev-split-{i}" for i in range(16)]
        for i, d in enumerate(ids):
            actions = DeviceActions(d, make_events(f"s{i}", 3, 0, seed=i), START // DAY)
            await p.send(
                topics.name("actions"),
                encode(actions),
                key=device_pseudonym(settings.pseudonym_key, d).encode(),
            )
        await p.flush()
        await wait_for(
            lambda: sum(f.stats()["devices_hosted"] for f in fleets) == 16, 30, "16 devices hosted"
        )
        hosted = [set(f.devices) for f in fleets]
        assert hosted[0] and hosted[1] and not hosted[0] & hosted[1]
    finally:
        await p.stop()
        for fleet in fleets:
            await fleet.stop()
