"""Read whole topics (exports, checks, the global model) and wait for a namespace to go quiet (the day barrier)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aiokafka import TopicPartition

from streams.internals import fetch_committed
from streams.kafka import consumer, end_offsets
from streams.schemas import Record, SchemaError, decode
from streams.settings import Settings

log = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class Message:
    partition: int
    offset: int
    key: bytes | None
    value: bytes

async def read_topic(settings: Settings, name: str, fetch_max_bytes: int = 64 * 1024 * 1024,
                     max_partition_fetch_bytes: int = 16 * 1024 * 1024) -> list[Message]:
    """Every record of `name` from offset 0 up to the end offsets seen at the start.

    Topics of large records (the `models` topic) raise the fetch limits above one record's size."""
    ends = await end_offsets(settings, [name])
    todo = {tp: end for tp, end in ends.items() if end > 0}
    if not todo:
        return []
    reader = consumer(settings, enable_auto_commit=False, max_poll_records=10_000,
                      fetch_max_bytes=fetch_max_bytes, max_partition_fetch_bytes=max_partition_fetch_bytes)
    await reader.start()
    out: list[Message] = []
    try:
        reader.assign(list(todo))
        await reader.seek_to_beginning(*todo)
        while todo:
            batch = await reader.getmany(*todo, timeout_ms=1000)
            for tp, records in batch.items():
                out.extend(Message(tp.partition, r.offset, r.key, r.value) for r in records if r.offset < todo[tp])
                if records and records[-1].offset + 1 >= todo[tp]:
                    del todo[tp]
    finally:
        await reader.stop()
    return out

async def read_records(settings: Settings, name: str) -> list[Record]:
    """Decoded records of a topic, in partition/offset order; undecodable ones are skipped."""
    records = []
    for m in sorted(await read_topic(settings, name), key=lambda m: (m.partition, m.offset)):
        try:
            records.append(decode(m.value, 1 << 30))
        except SchemaError as err:
            log.debug("skip %s[%s]@%s: %s", name, m.partition, m.offset, err)
    return records

class LagProbe:
    """Lag of several groups, polled repeatedly with long-lived clients (cheap per poll)."""

    def __init__(self, settings: Settings, subscriptions: Mapping[str, Sequence[str]]) -> None:
        self.settings, self.subscriptions = settings, subscriptions
        self.topics = sorted({t for names in subscriptions.values() for t in names})
        self._groups = {g: consumer(settings, group_id=g, enable_auto_commit=False) for g in subscriptions}

    async def __aenter__(self) -> LagProbe:
        for client in self._groups.values():
            await client.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self._groups.values():
            await client.stop()

    async def lag(self) -> int:
        """Total lag of each group over the topics it subscribes (no commit yet counts from 0)."""
        return (await self.status())[0]

    async def status(self) -> tuple[int, int]:
        """(total lag, the sum of every group's committed offsets): the second grows while anyone works."""
        # a fresh reader per poll: a long-lived one served stale batches after seeks
        ends = await end_offsets(self.settings, self.topics)
        missing = set(self.topics) - {tp.topic for tp in ends}
        if missing:  # a false "no partitions" would read as zero lag
            raise RuntimeError(f"no partitions found for {sorted(missing)}")
        total = done = 0
        for group, names in self.subscriptions.items():
            mine = {tp for tp in ends if tp.topic in names}
            found = await self.committed(group, mine)
            total += sum(max(0, ends[tp] - max(found[tp], 0)) for tp in mine)
            done += sum(max(found[tp], 0) for tp in mine)
        return total, done

    async def committed(self, group: str, parts: set[TopicPartition]) -> dict[TopicPartition, int]:
        """`group`'s committed offset of each of `parts` (-1: none), through this probe's consumer."""
        return await fetch_committed(self._groups[group], parts)

async def wait_quiet(settings: Settings, subscriptions: Mapping[str, Sequence[str]], timeout_s: float = 600,
                     poll_s: float = 0.2, stable_polls: int = 2) -> float:
    """Block until every group has zero lag for `stable_polls` polls in a row; returns seconds waited.

    Raises when no group commits anything for `timeout_s` while some lag remains: a hung consumer,
    not a slow day (a loaded machine stretched one chaos day past a fixed five minutes).
    """
    loop = asyncio.get_running_loop()
    start = since = loop.time()
    quiet, last_done = 0, -1
    async with LagProbe(settings, subscriptions) as probe:
        while quiet < stable_polls:
            current, done = await probe.status()
            if done != last_done:
                last_done, since = done, loop.time()
            elif current and loop.time() - since > timeout_s:
                raise TimeoutError(f"namespace not quiet: lag {current} and no commit for {timeout_s:.0f} s "
                                   f"(groups {sorted(subscriptions)})")
            log.debug('lag %s', current)
            quiet = quiet + 1 if current == 0 else 0
            await asyncio.sleep(poll_s)
    return loop.time() - start
