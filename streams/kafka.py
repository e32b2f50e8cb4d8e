"""Thin aiokafka helpers: client options from settings, topic creation from topics.yaml, lag."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from streams.internals import fetch_committed, refresh_metadata
from streams.settings import Settings
from streams.topics import Topics, TopicSpec

log = logging.getLogger(__name__)
STACK_FILE = "stack.json"


class BrokerUnavailable(RuntimeError):
    """No bootstrap configured and no running local stack recorded."""


class TopicMismatch(RuntimeError):
    """An existing topic disagrees with topics.yaml (e.g. partition count)."""


def stack_file(settings: Settings) -> Path:
    return settings.state_dir / STACK_FILE


def bootstrap_servers(settings: Settings) -> str:
    """The configured bootstrap, else the one `coda stack up` recorded."""
    if settings.bootstrap:
        return settings.bootstrap
    path = stack_file(settings)
    try:
        return str(json.loads(path.read_text())["bootstrap"])
    except (OSError, KeyError, ValueError):
        raise BrokerUnavailable(
            f"no broker: set CODA_BOOTSTRAP, or run `coda stack up` (no {path})"
        ) from None


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.security_protocol not in ("SSL", "SASL_SSL"):
        return None
    ctx = ssl.create_default_context(cafile=settings.ssl_cafile or None)
    if settings.ssl_certfile:
        ctx.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile or None)
    return ctx


def client_options(settings: Settings) -> dict[str, Any]:
    """aiokafka keyword arguments shared by producers, consumers and the admin client."""
    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers(settings),
        "security_protocol": settings.security_protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.sasl_mechanism:
        options.update(
            sasl_mechanism=settings.sasl_mechanism,
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=settings.sasl_password,
        )
    return options


def producer(settings: Settings, **extra: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(**client_options(settings), linger_ms=5, max_request_size=16_000_000, **extra)


def consumer(settings: Settings, *topics: str, **extra: Any) -> AIOKafkaConsumer:
    extra.setdefault("fetch_max_wait_ms", settings.fetch_max_wait_ms)
    return AIOKafkaConsumer(*topics, **client_options(settings), **extra)


async def admin(settings: Settings) -> AIOKafkaAdminClient:
    client = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=15_000)
    await client.start()
    return client


async def wait_for_metadata(settings: Settings, timeout_s: float = 30.0) -> None:
    """Block until the broker answers a metadata request."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last: Exception | None = None
    await _wait_for_port(bootstrap_servers(settings).split(",")[0], deadline)
    while loop.time() < deadline:
        client = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=2000)
        try:
            await client.start()
            await client.list_topics()
            return
        except (KafkaError, OSError) as exc:
            last = exc
            await asyncio.sleep(0.2)
        finally:
            await client.close()
    raise BrokerUnavailable(f"broker at {bootstrap_servers(settings)} did not answer: {last}")


async def _wait_for_port(server: str, deadline: float) -> None:
    """Poll the TCP port first, so aiokafka does not log a connection error per attempt."""
    host, _, port = server.rpartition(":")
    while asyncio.get_running_loop().time() < deadline:
        try:
            _, writer = await asyncio.open_connection(host, int(port))
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)


async def partition_counts(client: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    existing = set(await client.list_topics())
    wanted = [n for n in names if n in existing]
    if not wanted:
        return {}
    described = await client.describe_topics(wanted)
    return {d["topic"]: len(d["partitions"]) for d in described if not d.get("error_code")}


async def ensure_topics(settings: Settings, topics: Topics) -> list[str]:
    """Create every topic of topics.yaml that is missing; refuse a partition mismatch."""
    client = await admin(settings)
    try:
        names = {spec.full_name(topics.prefix): spec for spec in topics}
        counts = await partition_counts(client, list(names))
        _check_partitions(names, counts)
        missing = [_new_topic(name, spec) for name, spec in names.items() if name not in counts]
        if missing:
            try:
                await client.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # created concurrently by another process: checked again below
            _check_partitions(names, await partition_counts(client, list(names)))
        return [t.name for t in missing]
    finally:
        await client.close()


def _check_partitions(names: dict[str, TopicSpec], counts: dict[str, int]) -> None:
    for name, count in counts.items():
        want = names[name].partitions
        if count != want:
            raise TopicMismatch(
                f"topic {name} exists with {count} partitions but topics.yaml declares {want}; "
                "delete it or use another CODA_TOPIC_PREFIX"
            )


def _new_topic(name: str, spec: TopicSpec) -> NewTopic:
    return NewTopic(name, spec.partitions, 1, topic_configs=spec.config())


@dataclass(frozen=True, slots=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int
    end: int

    @property
    def lag(self) -> int:
        return max(0, self.end - max(self.committed, 0))


async def end_offsets(settings: Settings, names: list[str]) -> dict[TopicPartition, int]:
    """True end offsets (high watermarks) of every partition of `names`.

    Tansu 0.6 answers ListOffsets(latest) with the *base offset of the last record batch*
    + 1, not the offset after its last record, so a batch of 20 records reports 1. We read
    the last batch once and take its last offset + 1; on a real Kafka this changes nothing.
    """
    client = consumer(settings, enable_auto_commit=False, max_poll_records=100_000)
    await client.start()
    try:
        for _ in range(20):
            if all(client.partitions_for_topic(n) for n in names):
                break
            await refresh_metadata(client)
        parts = [TopicPartition(n, p) for n in names for p in (client.partitions_for_topic(n) or ())]
        reported = await client.end_offsets(parts) if parts else {}
        return await read_last_batches(client, reported)
    finally:
        await client.stop()


async def read_last_batches(client: AIOKafkaConsumer, reported: dict[TopicPartition, int],
                             timeout_s: float = 3.0) -> dict[TopicPartition, int]:
    ends = dict(reported)
    todo = {tp for tp, end in reported.items() if end > 0}
    if not todo:
        return ends
    client.assign(sorted(todo))
    for tp in todo:
        client.seek(tp, reported[tp] - 1)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while todo and asyncio.get_running_loop().time() < deadline:
        batch = await client.getmany(*todo, timeout_ms=200)
        for tp, records in batch.items():
            if records:
                ends[tp] = max(ends[tp], records[-1].offset + 1)
                todo.discard(tp)
    return ends


async def committed_offsets(settings: Settings, group: str, parts: list[TopicPartition]) -> dict[TopicPartition, int]:
    """A group's committed offsets (-1 where none).

    Asked through a consumer's coordinator (OffsetFetch), not the admin client: aiokafka's
    admin `list_consumer_group_offsets` cannot parse Tansu's reply. The probe never joins.
    """
    probe = consumer(settings, group_id=group, enable_auto_commit=False)
    await probe.start()
    try:
        return await fetch_committed(probe, parts)
    finally:
        await probe.stop()


async def list_groups(settings: Settings, prefix: str = "") -> list[str]:
    client = await admin(settings)
    try:
        return sorted(g[0] for g in await client.list_consumer_groups() if g[0].startswith(prefix))
    finally:
        await client.close()


async def group_lags(settings: Settings, topics: list[str], groups: list[str]) -> list[PartitionLag]:
    """Committed offset vs end offset of each group on each of `topics` it has committed on."""
    ends = await end_offsets(settings, topics)
    out = []
    for group in groups:
        committed = await committed_offsets(settings, group, sorted(ends))
        if all(off < 0 for off in committed.values()):
            continue  # this group does not read these topics
        out += [PartitionLag(group, tp.topic, tp.partition, off, ends[tp]) for tp, off in sorted(committed.items())]
    return out
