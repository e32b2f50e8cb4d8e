"""The device fleet process: one consumer group over `actions` + `down`, hosting its partitions' devices.

Range assignment gives partition p of both topics to the same process, and a device's
`actions` and `down` traffic share its pseudonym as key, so a device lives wholly in one
process; start the fleet twice and the two split the devices. Devices are created on their
first message and hold no model in memory; concurrency is bounded by a semaphore and the
database pool, and torch jobs run one at a time, so 10,000 devices cost neither threads nor models.

Delivery: offsets are committed after a fetched batch is fully processed and its outputs
flushed (at-least-once); redelivered batches are recognised by batch id, redelivered actions
by event id. Anything that cannot be accepted is dead-lettered with its topic[partition]@offset,
and `stats()` reconciles in = processed + dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata

from core.privacy import device_pseudonym
from core.training import global_model_from_bytes
from device.device import Device, device_dir
from device.initialmodel import fresh_initial, initial_model_file
from device.modelstore import ModelFile, atomic_write
from device.outcomes import Outcome
from device.runtime import Runtime
from device.storage import DB_FILE
from streams import kafka
from streams.deadletter import DeadLetters
from streams.metrics import Metrics, consumer_lag
from streams.schemas import (
    DayEnd,
    DeviceActions,
    DevicePast,
    DownBatch,
    DownNotice,
    GlobalModel,
    Record,
    SchemaError,
    decode,
    encode,
)
from streams.settings import Settings
from streams.topicio import read_topic
from streams.topics import Topics, load_topics

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 2.0
MODEL_MAX_BYTES = 200_000_000


async def load_global_model(
    settings: Settings, topics: Topics, timeout_s: float = 30.0
) -> GlobalModel | None:
    """The newest (created_ts, then offset) GlobalModel on the `models` topic, or None if it is empty."""
    name = topics.name("models")
    try:
        messages = await asyncio.wait_for(
            read_topic(settings, name, fetch_max_bytes=MODEL_MAX_BYTES, max_partition_fetch_bytes=MODEL_MAX_BYTES),
            timeout_s,
        )
    except TimeoutError:
        raise TimeoutError(f"reading {name} took longer than {timeout_s}s") from None
    best: tuple[int, int, GlobalModel] | None = None
    for m in sorted(messages, key=lambda m: (m.partition, m.offset)):
        try:
            gm = decode(m.value, MODEL_MAX_BYTES, (GlobalModel,))
        except SchemaError as err:
            log.warning("skipping %s[%d]@%d: %s", name, m.partition, m.offset, err)
            continue
        assert isinstance(gm, GlobalModel)
        if best is None or (gm.created_ts, m.offset) >= best[:2]:
            best = (gm.created_ts, m.offset, gm)
    return best[2] if best else None


def initial_from_global(settings: Settings, gm: GlobalModel | None) -> ModelFile:
    """Every new device's M0: the global model, or (none published yet) a seeded fresh DIN."""
    if gm is None:
        log.warning("no global model on the models topic: devices start from a fresh DIN (seed 0)")
        return fresh_initial(settings.features)
    try:
        global_model_from_bytes(gm.weights, settings.features)
    except Exception as exc:  # shape mismatch, bad bytes: the fleet cannot serve this model
        raise RuntimeError(
            f"global model {gm.version} does not fit feature space " f"{settings.features}: {exc}"
        ) from exc
    return initial_model_file(gm.weights, f"global:{gm.version}")


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.fleet._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.fleet._on_assigned(set(assigned))


class Fleet:
    """Hosts the virtual devices of this process's partitions of `actions` and `down`."""

    def __init__(
        self,
        settings: Settings,
        fleet_id: str = "fleet-0",
        topics: Topics | None = None,
        initial: ModelFile | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.settings = settings
        self.fleet_id = fleet_id
        self.topics = topics or load_topics(settings.topics_file, settings.topic_prefix)
        self.group = f"{settings.app_id}-fleet"
        self._initial = initial
        self._executor = executor
        if settings.fleet_concurrency < 1:
            raise ValueError(f"CODA_FLEET_CONCURRENCY must be ≥ 1, got {settings.fleet_concurrency}")
        self._sem = asyncio.Semaphore(settings.fleet_concurrency)
        self.runtime: Runtime | None = None
        self.devices: dict[str, Device] = {}
        self._by_partition: dict[int, set[str]] = defaultdict(set)
        self._consumer: AIOKafkaConsumer | None = None
        self.lag: int | None = None  # records behind the fetched high watermarks (the stats writer updates it)
        self.metrics: Metrics | None = None  # the process's /metrics endpoint (`coda fleet` starts it)
        self._producer: AIOKafkaProducer | None = None
        self._letters: DeadLetters | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._running = False
        self._busy = False
        self._done = asyncio.Event()
        self._done.set()
        self._assigned: set[TopicPartition] = set()
        self.counts: Counter[str] = Counter()
        self.started_at = 0.0
        self.last_processed_at = 0.0  # wall clock of the last record handled (processed or dead-lettered)
        self.names = {t: self.topics.name(t) for t in ("actions", "down", "up", "dead-letters", "models")}
        self._kinds = {
            self.names["actions"]: self.topics["actions"].kinds,
            self.names["down"]: self.topics["down"].kinds,
        }

    # ---- lifecycle
    async def start(self) -> None:
        s = self.settings
        initial = self._initial or initial_from_global(s, await load_global_model(s, self.topics))
        self.runtime = Runtime(s, initial, executor=self._executor)
        await self.runtime.warm_up()
        self._producer = kafka.producer(s)
        await self._producer.start()
        self._letters = DeadLetters(self._send_dead, stage=f"fleet:{self.fleet_id}")
        self._consumer = kafka.consumer(
            s,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=int(s.session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.heartbeat_interval_s * 1000),
            rebalance_timeout_ms=int(s.rebalance_timeout_s * 1000),
            max_poll_interval_ms=600_000,
            max_partition_fetch_bytes=16_000_000,
        )
        self._consumer.subscribe([self.names["actions"], self.names["down"]], listener=_Rebalance(self))
        await self._consumer.start()
        self._running = True
        self.started_at = time.time()
        self._tasks = [
            asyncio.create_task(self._loop(), name=f"{self.fleet_id}-loop"),
            asyncio.create_task(self._write_stats_periodically(), name=f"{self.fleet_id}-stats"),
        ]
        log.info("fleet %s started: group %s, initial model %s", self.fleet_id, self.group, initial.version)

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the fetch in flight (commit included), then close everything."""
        self._running = False
        if self._tasks:
            loop_task, *others = self._tasks
            for task in others:  # the stats writer only sleeps: no need to wait for it
                task.cancel()
            _, pending = await asyncio.wait([loop_task], timeout=timeout_s)
            for task in pending:
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._tasks = []
        if self._consumer is not None:
            with contextlib.suppress(KafkaError):
                await self._consumer.stop()
        if self._producer is not None:
            with contextlib.suppress(KafkaError):
                await self._producer.stop()
        if self.runtime is not None:
            self.write_stats()
            await self.runtime.close()
        self._consumer = self._producer = None

    async def run_forever(self) -> None:
        await self.start()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            await self.stop()

    # ---- the loop
    async def _loop(self) -> None:
        assert self._consumer is not None
        while self._running:
            try:
                fetched = await self._consumer.getmany(timeout_ms=200, max_records=self.settings.take_max)
            except KafkaError as exc:
                log.warning("fleet %s: fetch failed: %s", self.fleet_id, exc)
                await asyncio.sleep(0.5)
                continue
            if not fetched:
                continue
            self._busy = True
            self._done.clear()
            try:
                await self._process(fetched)
            finally:
                self._busy = False
                self._done.set()

    async def _process(self, fetched: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Handle a fetch, flush what it produced, then commit; on a send failure, rewind and retry."""
        assert self._consumer is not None and self._producer is not None
        try:
            await asyncio.gather(*(self._partition(tp, records) for tp, records in fetched.items()))
            await self._producer.flush()
        except KafkaError as exc:
            # nothing committed: rewind so these records come again (handlers are idempotent)
            log.warning(
                "fleet %s: producing failed (%s); retrying %d partition(s)", self.fleet_id, exc, len(fetched)
            )
            self.counts["retries"] += 1
            for tp, records in fetched.items():
                with contextlib.suppress(IllegalStateError):
                    self._consumer.seek(tp, records[0].offset)
            await asyncio.sleep(0.5)
            return
        await self._commit({tp: records[-1].offset + 1 for tp, records in fetched.items() if records})

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        try:
            await self._consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
        except (CommitFailedError, IllegalStateError) as exc:  # rebalanced away: the new owner redoes it
            log.warning("fleet %s: commit failed (%s); records will be redelivered", self.fleet_id, exc)
            return

    async def _partition(self, tp: TopicPartition, records: list[ConsumerRecord]) -> None:
        """In order per partition; devices run concurrently between DayEnd ticks."""
        segment: list[tuple[ConsumerRecord, Record]] = []
        for r in records:
            self.counts["in"] += 1
            record = await self._decode(r)
            if record is None:
                continue
            if isinstance(record, DayEnd):
                await self._segment(segment)
                segment = []
                await self._day_end(tp.partition, record.day)
                self._done_ok(r, "day_end")
            else:
                segment.append((r, record))
        await self._segment(segment)

    async def _decode(self, r: ConsumerRecord) -> Record | None:
        try:
            return decode(r.value, self.settings.max_envelope_bytes, self._kinds[r.topic])
        except SchemaError as err:
            await self._dead(r, err.reason, err.detail)
            return None

    async def _segment(self, items: list[tuple[ConsumerRecord, Record]]) -> None:
        by_device: dict[bytes, list[tuple[ConsumerRecord, Record]]] = defaultdict(list)
        for item in items:
            by_device[item[0].key or b""].append(item)
        await asyncio.gather(*(self._device_work(key, work) for key, work in by_device.items()))

    async def _device_work(self, key: bytes, work: list[tuple[ConsumerRecord, Record]]) -> None:
        async with self._sem:
            for r, record in work:
                try:
                    handled = await self._handle(key, r, record)
                except Exception as exc:  # a bug or a broken database must not stop the fleet
                    log.exception(
                        "fleet %s: %s[%d]@%d failed for device key %r",
                        self.fleet_id,
                        r.topic,
                        r.partition,
                        r.offset,
                        key,
                    )
                    await self._dead(r, "device_error", f"{type(exc).__name__}: {exc}")
                    continue
                if handled is not None:
                    await self._finish(r, *handled)

    async def _handle(
        self, key: bytes, r: ConsumerRecord, record: Record
    ) -> tuple[Device, Outcome, str] | None:
        """Route to the device; None when the record was dead-lettered on the way."""
        try:
            pseudonym = key.decode("ascii")
        except UnicodeDecodeError:
            pseudonym = ""
        if not pseudonym:
            await self._dead(r, "bad_key", f"key {key!r} is not a device pseudonym")
            return None
        if isinstance(record, DeviceActions | DevicePast):
            if device_pseudonym(self.settings.pseudonym_key, record.device_id) != pseudonym:
                await self._dead(r, "wrong_key", f"actions of {record.device_id!r} under key {pseudonym}")
                return None
            device = self._device(pseudonym, r.partition, record.device_id)
            assert device is not None
            if isinstance(record, DevicePast):
                return device, await device.on_past(record), "past"
            return device, await device.on_actions(record), "actions"
        device = self._device(pseudonym, r.partition)
        if device is None:
            await self._dead(r, "unknown_device", f"no device {pseudonym} here (no actions seen yet)")
            return None
        if isinstance(record, DownBatch):
            return device, await device.on_batch(record), "batches"
        if isinstance(record, DownNotice):
            return device, await device.on_notice(record), "notices"
        raise TypeError(f"unexpected {type(record).__name__}")  # decode() lets only the topic's kinds in

    async def _finish(self, r: ConsumerRecord, device: Device, outcome: Outcome, kind: str) -> None:
        if outcome.rejected is not None:
            await self._dead(r, outcome.rejected.reason, str(outcome.rejected))
        else:
            self._done_ok(r, "duplicates" if outcome.duplicate else kind)
        for message in outcome.up:
            await self._send_up(device, message)
        if outcome.trained is not None and not outcome.trained.skipped:
            self.counts["trainings"] += 1
            self.counts["models_kept"] += outcome.trained.kept
        self.counts["filtered_kept"] += outcome.filtered

    def _done_ok(self, r: ConsumerRecord, kind: str) -> None:
        self.counts["processed"] += 1
        self.counts[kind] += 1
        self.last_processed_at = time.time()

    def _device(self, pseudonym: str, partition: int, device_id: str = "") -> Device | None:
        device = self.devices.get(pseudonym)
        if device is None:
            assert self.runtime is not None
            known = (device_dir(self.settings.state_dir, pseudonym) / DB_FILE).exists()
            if not device_id and not known:
                return None
            device = Device(self.runtime, pseudonym, device_id)
            self.devices[pseudonym] = device
            self._by_partition[partition].add(pseudonym)
        return device

    async def _day_end(self, partition: int, day: int) -> None:
        hosted = [self.devices[p] for p in self._by_partition.get(partition, ()) if p in self.devices]

        async def one(device: Device) -> None:
            async with self._sem:
                try:
                    expired, pull = await device.on_day_end(day)
                    self.counts["expired_local"] += expired
                    if pull is not None:
                        await self._send_up(device, pull)
                except Exception:
                    log.exception(
                        "fleet %s: day-end %d failed for device %s", self.fleet_id, day, device.pseudonym
                    )

        await asyncio.gather(*(one(d) for d in hosted))

    # ---- sending
    async def _send_up(self, device: Device, message: Record) -> None:
        assert self._producer is not None
        await self._producer.send(self.names["up"], encode(message), key=device.device_id.encode())
        self.counts[f"up_{type(message).__name__}"] += 1

    async def _send_dead(self, key: bytes, value: bytes) -> None:
        assert self._producer is not None
        await self._producer.send(self.names["dead-letters"], value, key=key)

    async def _dead(self, r: ConsumerRecord, reason: str, detail: str) -> None:
        self.counts["dead_lettered"] += 1
        self.last_processed_at = time.time()
        assert self._letters is not None
        await self._letters.reject(r.value or b"", reason, detail, r.topic, r.partition, r.offset)

    # ---- rebalancing
    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        """Let the batch in flight finish and commit before the partitions move."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._done.wait(), timeout=max(1.0, self.settings.rebalance_timeout_s))

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Forget devices whose partitions went to another process (their files stay on disk)."""
        self._assigned = assigned
        mine = {tp.partition for tp in assigned}
        for partition in [p for p in self._by_partition if p not in mine]:
            for pseudonym in self._by_partition.pop(partition):
                self.devices.pop(pseudonym, None)
        self.counts["rebalances"] += 1
        log.info("fleet %s: assigned %s", self.fleet_id, sorted((tp.topic, tp.partition) for tp in assigned))

    # ---- observing
    def idle(self) -> bool:
        """Nothing fetched is waiting or in processing, and every output was flushed."""
        return not self._busy

    async def drained(self) -> bool:
        """Idle, and every assigned partition consumed up to the high watermark last fetched."""
        if self._busy or self._consumer is None or not self._assigned:
            return False
        for tp in self._assigned:
            high = self._consumer.highwater(tp)
            try:
                position = await self._consumer.position(tp)
            except IllegalStateError:  # reassigned meanwhile
                return False
            if high is None or position < high or self._busy:
                return False
        return True

    def device(self, pseudonym: str) -> Device | None:
        return self.devices.get(pseudonym)

    def stats(self) -> dict[str, Any]:
        c = self.counts
        runtime = self.runtime
        out: dict[str, Any] = {
            "fleet": self.fleet_id,
            "group": self.group,
            "uptime_s": round(time.time() - self.started_at, 1),
            "last_processed_at": self.last_processed_at,
            "in": c["in"],
            "processed": c["processed"],
            "dead_lettered": c["dead_lettered"],
            "in_flight": c["in"] - c["processed"] - c["dead_lettered"],  # 0 whenever idle
            "devices_hosted": len(self.devices),
            "partitions": sorted({tp.partition for tp in self._assigned}),
            "counts": dict(c),
            "idle": self.idle(),
            "lag": self.lag,
        }
        if self._letters is not None:
            out["dead_letter_reasons"] = dict(self._letters.counts)
        if runtime is not None:
            out["accounting"] = runtime.accounting.summary()
            out["pool"] = {"open": runtime.pool.open_now, **vars(runtime.pool.stats)}
            out["model_cache"] = {"hits": runtime.models.hits, "misses": runtime.models.misses}
            out["initial_model"] = runtime.initial.version
        return out

    def write_stats(self) -> Path:
        path = self.settings.state_dir / "fleets" / f"{self.fleet_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        current = self.stats()
        atomic_write(path, json.dumps(current, indent=1, default=str).encode())
        if self.metrics is not None:
            self.metrics.update(current)
        return path

    async def _write_stats_periodically(self) -> None:
        while self._running:
            await asyncio.sleep(STATS_INTERVAL_S)
            try:
                if self._consumer is not None:
                    self.lag = await consumer_lag(self._consumer)
                self.write_stats()
            except OSError as exc:
                log.warning("fleet %s: cannot write stats: %s", self.fleet_id, exc)
