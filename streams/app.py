"""Faust app factory: one app from the one settings object, raw-bytes topics from topics.yaml."""

from __future__ import annotations

import logging
from typing import Any

import faust
from aiokafka import TopicPartition
from faust.auth import SASLCredentials, SSLCredentials
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.internals import changelog_topics, fetch_positions, set_fetch_max_wait, worker_consumer
from streams.kafka import bootstrap_servers, consumer, read_last_batches, ssl_context
from streams.settings import Settings
from streams.topics import Topics, load_topics

log = logging.getLogger(__name__)


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer with our fetch wait instead of its fixed 1.5 s."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        set_fetch_max_wait(consumer, self.app.conf.coda_fetch_max_wait_ms)
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
    """Faust's consumer, guarded against records it would skip without processing them.

    Faust drops fetched records it cannot deliver yet (recovery, a rebalance) and relies on a
    later seek to committed offsets to read them again; a fetch from the old position can
    still come in after that seek, and Faust then takes the jump for a gap (as on a compacted
    topic), treats the records in between as done and commits past them. Measured on a
    restart with a backlog: ~30 records per partition never processed, and sometimes a commit
    stuck below them for good. None of our stream topics is compacted or transactional, so
    a jump here always means lost records: seek back and read them.
    """

    MAX_REREADS = 5  # the same jump again and again: accept it (a real gap) and say so

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _coda_state(self) -> tuple[dict[Any, int], dict[Any, int]]:
        if not hasattr(self, "_coda_next"):
            self._coda_next: dict[Any, int] = {}  # next offset this consumer must deliver, per partition
            self._coda_rereads: dict[Any, int] = {}
        return self._coda_next, self._coda_rereads

    async def perform_seek(self) -> None:
        await super().perform_seek()
        expected, _ = self._coda_state()
        expected.clear()
        expected.update({tp: off for tp, off in self._read_offset.items() if off is not None})

    async def seek(self, partition: Any, offset: int) -> None:
        await super().seek(partition, offset)
        self._coda_state()[0][partition] = offset

    async def on_partitions_revoked(self, revoked: Any) -> None:
        expected, rereads = self._coda_state()
        for tp in revoked:
            expected.pop(tp, None)
            rereads.pop(tp, None)
        await super().on_partitions_revoked(revoked)

    async def getmany(self, timeout: float) -> Any:  # an async generator, like Faust's
        expected, rereads = self._coda_state()
        await self._reread_dropped(expected, rereads)
        rewound: set[Any] = set()
        async for tp, message in super().getmany(timeout):
            if tp in rewound:
                continue
            want = expected.get(tp)
            if want is not None and message.offset > want and self._guarded(tp):
                rereads[tp] = rereads.get(tp, 0) + 1
                if rereads[tp] <= self.MAX_REREADS:
                    log.warning("%s[%d]: got offset %d where %d was due; reading the %d skipped record(s) again",
                                tp.topic, tp.partition, message.offset, want, message.offset - want)
                    rewound.add(tp)
                    await self.seek(tp, want)
                    continue
                log.error("%s[%d]: offsets %d..%d never arrived after %d tries; going on without them",
                          tp.topic, tp.partition, want, message.offset - 1, self.MAX_REREADS)
            rereads.pop(tp, None)
            expected[tp] = message.offset + 1
            yield tp, message

    async def _reread_dropped(self, expected: dict[Any, int], rereads: dict[Any, int]) -> None:
        """Seek back where the fetch position passed records that were never delivered.

        Faust also drops fetched records when a rebalance or recovery interrupts a fetch, and
        counts on its seek to committed offsets; when a late fetch overtakes that seek, the
        position ends past records no stream saw, and at the end of a partition no later
        record arrives to reveal the jump (seen with batched agents after a SIGKILL: `up`
        partitions stuck with 19 records never processed, chaos seed 8). Between two of
        these calls every record the fetcher returned has passed `getmany`, so a position
        beyond the next offset due always means dropped records.
        """
        positions = self._fetch_positions()
        for tp, want in list(expected.items()):
            position = positions.get(tp)
            if position is None or position <= want or not self._guarded(tp):
                continue
            rereads[tp] = rereads.get(tp, 0) + 1
            if rereads[tp] > self.MAX_REREADS:
                log.error("%s[%d]: fetched up to %d but %d..%d were never delivered after %d tries; going on",
                          tp.topic, tp.partition, position, want, position - 1, self.MAX_REREADS)
                expected[tp] = position
                continue
            log.warning("%s[%d]: fetched up to %d but offsets from %d were never delivered; reading them again",
                        tp.topic, tp.partition, position, want)
            await self.seek(tp, want)

    def _fetch_positions(self) -> dict[Any, int]:
        """The aiokafka fetch position of each assigned partition ({} before an assignment; a changed
        aiokafka raises `InternalChanged` instead of switching the guard off)."""
        return fetch_positions(worker_consumer(self))

    def _guarded(self, tp: Any) -> bool:
        """Stream topics only: changelogs (compacted on a real Kafka) may have genuine gaps."""
        return tp.topic not in changelog_topics(self.app)


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
        topic_partitions=topics.flow_partitions,  # tables are co-partitioned with the flow
        topic_replication_factor=1,
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_commit_interval=settings.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        producer_max_request_size=16_000_000,
        producer_max_batch_size=1_000_000,
        stream_wait_empty=False,
        table_standby_replicas=settings.table_standby_replicas,
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
