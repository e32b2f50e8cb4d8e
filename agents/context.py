"""What every cloud agent shares: settings, topics, tables, the index, dead letters and counters."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import faust
from aiokafka.partitioner import murmur2

from streams.app import topic
from streams.deadletter import DeadLetters
from streams.internals import changelog_callback
from streams.schemas import Record, SchemaError, decode, encode
from streams.settings import Settings
from streams.topics import Topics

log = logging.getLogger(__name__)


def partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner gives `key`: scatter targets it."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


Accepted = tuple[faust.EventT, Record]  # an event and its decoded record
R = TypeVar("R", bound=Record)


def partitioned(run: Sequence[Accepted], kind: type[R] | tuple[type[R], ...]) -> list[tuple[int, R]]:
    """Each record of `run` (all of `kind`) with its event's partition: where its state writes go."""
    out = []
    for event, record in run:
        assert isinstance(record, kind)
        out.append((event.message.partition, record))
    return out


def segments(accepted: Sequence[Accepted],
             barrier: type[Record]) -> Iterator[tuple[list[Accepted], Accepted | None]]:
    """Split a batch at each `barrier` record: (the records before it, the barrier or None at the end).

    A batch is folded segment by segment, so a barrier (a pull, an end-of-day tick) still
    sees every state change of the records that came before it, as one at a time would.
    """
    run: list[Accepted] = []
    for item in accepted:
        if isinstance(item[1], barrier):
            yield run, item
            run = []
        else:
            run.append(item)
    if run:
        yield run, None


async def put(table: faust.Table, partition: int, key: bytes, value: Record) -> None:
    """`table[key] = value`, its changelog record on `partition` (the source event's).

    Faust takes the changelog partition from the current event, which in a batch is the
    batch's last event, not each record's; each key must go with its own event's partition,
    or a restart would recover it on the wrong worker. Awaiting the send (instead of Faust's
    100-message table buffer) keeps a batch's writes from stalling the stream.
    """
    await _send_changelog(table, partition, key, value, "coda")
    table.data[key] = value


async def drop(table: faust.Table, partition: int, key: bytes) -> None:
    """`del table[key]` (a changelog tombstone on `partition`), if the key is there."""
    if key in table.data:
        await _send_changelog(table, partition, key, None, "raw")
        del table.data[key]


async def _send_changelog(table: faust.Table, partition: int, key: bytes, value: Record | None,
                          serializer: str) -> None:
    on_sent = changelog_callback(table)
    await table.changelog_topic.send(key=key, value=value, partition=partition, key_serializer="raw",
                                     value_serializer=serializer, callback=on_sent)


@dataclass
class StageCounters:
    """in = processed + dead-lettered, per stage; `extra` counts things worth reporting."""

    received: int = 0
    processed: int = 0
    dead: int = 0
    extra: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"in": self.received, "processed": self.processed, "dead_lettered": self.dead,
                **dict(self.extra)}


@dataclass
class CloudContext:
    settings: Settings
    topics: Topics
    app: faust.App
    index: Any = None  # VectorIndex, opened when the worker starts
    index_home: Any = None  # the worker's directory for local index files
    counters: dict[str, StageCounters] = field(default_factory=dict)
    letters: DeadLetters | None = None
    metrics: Any = None  # streams.metrics.Metrics: the worker's /metrics endpoint
    faust_topics: dict[str, faust.TopicT] = field(default_factory=dict)
    # the index is not thread-safe: every call goes through this one thread
    index_pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "index"))

    async def index_call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.index_pool, lambda: fn(*args, **kwargs))

    def topic(self, name: str) -> faust.TopicT:
        if name not in self.faust_topics:
            self.faust_topics[name] = topic(self.app, self.topics, name)
        return self.faust_topics[name]

    def stage(self, name: str) -> StageCounters:
        return self.counters.setdefault(name, StageCounters())

    def table(self, name: str) -> faust.Table:
        """A changelogged table of schema records, co-partitioned with the flow's topics."""
        table = self.app.Table(name, default=None, partitions=self.topics.flow_partitions)
        # Faust derives serializers from model types (json otherwise); set them before the
        # changelog topic is first created so changelog and recovery use our codec.
        table.key_serializer, table.value_serializer = "raw", "coda"
        # ...but App.Table has already built the changelog topic with Faust's json defaults
        # (TableManager.add reads it), and recovery decodes changelog records with that topic's
        # schema: without this, a restarted worker dropped every record and never finished recovery.
        changelog = table.changelog_topic
        changelog.schema.update(key_serializer="raw", value_serializer="coda")
        changelog.key_serializer, changelog.value_serializer = "raw", "coda"
        return table

    async def send(self, name: str, key: str, record: Record, partition: int | None = None) -> None:
        await self.topic(name).send(key=key.encode(), value=encode(record), partition=partition)

    async def batches(self, stream: faust.StreamT) -> AsyncIterator[list[faust.EventT]]:
        """The stream as batches: each event with those already waiting behind it, up to `agent_batch`.

        Greedy, never waiting for more: a lone event is handled at once, a backlog in batches.
        Faust acks a stream's events itself only one at a time, so with batches the stream's
        own acks are off and each batch is acked once the loop body is done with it (also
        when the body fails, as Faust does). Unlike Faust's `take_events` it needs no timer
        task filling a buffer in the background, and adds no wait to a lone event.
        """
        limit = self.settings.agent_batch
        if limit <= 1:
            async for event in stream.events():
                yield [event]
            return
        nothing_waiting = stream.channel.queue.empty
        stream.enable_acks = False
        batch: list[faust.EventT] = []
        async for event in stream.events():
            batch.append(event)
            if len(batch) < limit and not nothing_waiting():
                continue
            try:
                yield batch
            finally:
                for done in batch:
                    await stream.ack(done)
                batch = []

    async def accept_all(self, stage: str, events: Sequence[faust.EventT], expect: str) -> list[Accepted]:
        """`accept` each event in order; the dead-lettered ones are left out."""
        accepted = []
        for event in events:
            record = await self.accept(stage, event, expect)
            if record is not None:
                accepted.append((event, record))
        return accepted

    async def accept(self, stage: str, event: faust.EventT, expect: str) -> Record | None:
        """Decode an event's value as one of topic `expect`'s kinds, or dead-letter it."""
        counters = self.stage(stage)
        counters.received += 1
        try:
            record = decode(event.value, self.settings.max_envelope_bytes, self.topics[expect].kinds)
        except SchemaError as err:
            counters.dead += 1
            await self.reject(event, err.reason, err.detail, stage)
            return None
        return record

    async def reject(self, event: faust.EventT, reason: str, detail: str, stage: str) -> None:
        if self.letters is None:
            self.letters = DeadLetters(self.topic("dead-letters").send, stage="cloud")
        msg = event.message
        await self.letters.reject(event.value or b"", reason, f"[{stage}] {detail}", msg.topic,
                                  msg.partition, msg.offset)
