"""Against the real embedded broker: topic creation, mismatch refusal, a Faust agent, dead letters."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from streams import schemas
from streams.app import create_app, topic
from streams.deadletter import DeadLetters
from streams.kafka import TopicMismatch, consumer, end_offsets, ensure_topics, producer
from streams.settings import Settings
from streams.topics import load_topics


async def _drain(settings: Settings, name: str, want: int, timeout_s: float = 60.0) -> list:
    """Read `want` records of topic `name` from the beginning."""
    c = consumer(settings, name, auto_offset_reset="earliest", enable_auto_commit=False)
    await c.start()
    out: list = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while len(out) < want and asyncio.get_running_loop().time() < deadline:
            batch = await c.getmany(timeout_ms=500)
            out.extend(r for records in batch.values() for r in records)
    finally:
        await c.stop()
    return out


async def test_topics_created_idempotently(settings: Settings) -> None:
    """ensure_topics creates every declared topic once, then nothing."""
    topics = load_topics(prefix=settings.topic_prefix)
    created = await ensure_topics(settings, topics)
    assert len(created) == len(list(topics))
    assert await ensure_topics(settings, topics) == []
    ends = await end_offsets(settings, [topics.name("up")])
    assert len(ends) == topics["up"].partitions


async def test_partition_mismatch_is_refused(settings: Settings) -> None:
    """An existing topic with another partition count is a clear error."""
    topics = load_topics(prefix=settings.topic_prefix)
    await ensure_topics(settings, topics)
    changed = dataclasses.replace(topics["up"], partitions=3)
    other = dataclasses.replace(topics, specs=(changed,))
    with pytest.raises(TopicMismatch, match=r"\.up exists with 8 partitions but topics.yaml declares 3"):
        await ensure_topics(settings, other)


async def test_faust_agent_consumes_and_produces(settings: Settings) -> None:
    """A Faust agent relays decoded records through Tansu and dead-letters garbage."""
    topics = load_topics(prefix=settings.topic_prefix)
    await ensure_topics(settings, topics)
    app = create_app(settings, topics)
    source, sink = topic(app, topics, "samples"), topic(app, topics, "matches")
    letters = DeadLetters(topic(app, topics, "dead-letters").send, stage="test")

    @app.agent(source)
    async def relay(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            msg = event.message
            try:
                record = schemas.decode(event.value, expect=topics["samples"].kinds)
            except schemas.SchemaError as err:
                await letters.reject_error(event.value, err, msg.topic, msg.partition, msg.offset)
                continue
            result = schemas.MatchResult(f"u{record.day}", record.day, [], [])
            await sink.send(key=event.key, value=schemas.encode(result))

    await app.start()
    try:
        p = producer(settings)
        await p.start()
        for day in range(20):
            await p.send(topics.name("samples"), schemas.encode(schemas.DayEnd(day)), key=b"k%d" % day)
        await p.send(topics.name("samples"), b"\x93garbage", key=b"bad")
        await p.stop()
        relayed = await _drain(settings, topics.name("matches"), 20)
        dead = await _drain(settings, topics.name("dead-letters"), 1)
    finally:
        await app.stop()
    assert sorted(schemas.decode(r.value).day for r in relayed) == list(range(20))
    letter = schemas.decode(dead[0].value)
    assert isinstance(letter, schemas.DeadLetter)
    assert letter.raw == b"\x93garbage" and letter.reason == "bad_msgpack"
    assert letter.topic == topics.name("samples") and letter.offset >= 0
    assert letters.counts == {"bad_msgpack": 1}


def test_standby_replicas_default_to_none_as_the_memory_store_keeps_no_offset(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """CODA_TABLE_STANDBY_REPLICAS reaches Faust; the default is 0 because a standby's copy is never used.

    A partition promoted to active starts recovery from its store's persisted offset; the memory
    store has none, so Faust re-reads the changelog from the start, standby or not. If a Faust
    release gives the memory store an offset, this fails and the default deserves another look.
    """
    from faust.types import TP

    base = Settings(state_dir=tmp_path, bootstrap="127.0.0.1:9")  # the app only connects when started
    app = create_app(base)
    assert app.conf.table_standby_replicas == 0
    assert create_app(base.replace(table_standby_replicas=1), app_id="coda-standby").conf.table_standby_replicas == 1
    table = app.Table("probe", default=int)
    assert table.persisted_offset(TP(table.changelog_topic.get_topic_name(), 0)) is None


def test_commit_interval_reaches_the_faust_app(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """CODA_COMMIT_INTERVAL_S sets how often a worker commits; experiment namespaces commit every 0.2 s."""
    from ops.experiment.runner import Params

    base = Settings(state_dir=tmp_path, bootstrap="127.0.0.1:9")
    assert create_app(base).conf.broker_commit_interval == 1.0
    scoped = Params(dataset="synthetic").settings_for(base, "commits", 0)
    assert scoped.commit_interval_s == 0.2
    assert create_app(scoped, app_id="coda-commits").conf.broker_commit_interval == 0.2
