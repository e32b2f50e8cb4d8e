"""Faust app factory: one app from the one settings object, raw-bytes topics from topics.yaml."""

from __future__ import annotations

from typing import Any

import faust
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka

from aiokafka import TopicPartition

from streams.kafka import bootstrap_servers, consumer, read_last_batches, ssl_context
from streams.settings import Settings
from streams.topics import Topics, load_topics


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer with our fetch wait instead of its fixed 1.5 s."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = self.app.conf.coda_fetch_max_wait_ms  # noqa: SLF001 - read at start()
        return consumer

    async def _highwaters(self, partitions: Any) -> Any:
        """End offsets for table recovery, corrected for Tansu (see `true_highwaters`)."""
        reported = await super()._highwaters(partitions)
        if self.consumer.in_transaction:
            return reported
        return await true_highwaters(self.app.conf.coda_settings, reported)


async def true_highwaters(settings: Settings, reported: Any) -> dict[Any, int]:
    """Correct ListOffsets(latest) by reading each partition's last record batch.

    Faust recovers a table by reading its changelog up to the reported end offset. Tansu 0.6
    reports the *base offset of the last record batch* + 1, so without this a restarted
    worker stopped recovery at the first record of the last batch and silently lost the
    rest (measured: 397 of 500 counter increments recovered). On a real Kafka this changes
    nothing. Keys keep the caller's partition type (Faust's TP or aiokafka's TopicPartition).
    """
    wanted = {TopicPartition(tp.topic, tp.partition): tp for tp, end in reported.items() if end}
    if not wanted:
        return dict(reported)
    client = consumer(settings, enable_auto_commit=False)
    await client.start()
    try:
        ends = await read_last_batches(client, {tp: reported[orig] for tp, orig in wanted.items()})
    finally:
        await client.stop()
    return {**reported, **{wanted[tp]: end for tp, end in ends.items()}}


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """The stock aiokafka transport, with a consumer whose fetch wait is configurable."""

    Consumer = _Consumer


TRANSPORT_SCHEME = "coda-kafka"
drivers.TRANSPORTS.aliases[TRANSPORT_SCHEME] = "streams.app:Transport"


def credentials(settings: Settings) -> object | None:
    context = ssl_context(settings)
    if settings.sasl_mechanism:
        return SASLCredentials(username=settings.sasl_username, password=settings.sasl_password,
                               ssl_context=context, mechanism=settings.sasl_mechanism)
    if context is not None:
        return SSLCredentials(context)
    return None


def create_app(settings: Settings, topics: Topics | None = None, app_id: str | None = None) -> faust.App:
    """A Faust app whose broker timeouts make group joins on Tansu fast.

    Tables live in memory and are recovered from their changelog topics on start
    (`store='memory://'`); a cluster deployment can switch to RocksDB via Faust's store URL.
    """
    topics = topics or load_topics(settings.topics_file, settings.topic_prefix)
    datadir = settings.state_dir / "faust"
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id or settings.app_id,
        broker=[f"{TRANSPORT_SCHEME}://{server}" for server in bootstrap_servers(settings).split(",")],
        broker_credentials=credentials(settings),
        store="memory://",
        topic_partitions=8,
        topic_replication_factor=1,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        producer_max_request_size=16_000_000,
        stream_wait_empty=False,
        datadir=str(datadir),
        key_serializer="raw",
        value_serializer="raw",
    )
    app.conf.coda_topics = topics  # type: ignore[attr-defined]
    app.conf.coda_fetch_max_wait_ms = settings.fetch_max_wait_ms  # type: ignore[attr-defined]
    app.conf.coda_settings = settings  # type: ignore[attr-defined] - true_highwaters needs the clients' options
    return app


def topic(app: faust.App, topics: Topics, name: str) -> faust.TopicT:
    """A raw-bytes Faust topic for a topics.yaml entry; our codec decodes, not Faust."""
    spec = topics[name]
    return app.topic(spec.full_name(topics.prefix), partitions=spec.partitions,
                     key_type=bytes, value_type=bytes, key_serializer="raw",
                     value_serializer="raw", internal=False)
