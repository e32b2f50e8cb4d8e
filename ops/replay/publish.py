"""Replay: publish behaviour events into a namespace in event-time order, day by day, resumably."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.privacy import device_pseudonym
from core.sample import DAY
from streams.kafka import producer
from streams.schemas import (
    BehaviourEvent,
    DayEnd,
    DeviceActions,
    DevicePast,
    Record,
    UpEnvelope,
    encode,
    profile_value,
)
from streams.settings import Settings
from streams.topics import Topics

log = logging.getLogger(__name__)


def to_event(raw: Mapping[str, object]) -> BehaviourEvent:
    """A checked event dict (ops/replay/contract.py, or a built-in dataset's) → the wire record.

    Profile values become strings here, so the wire carries what ingest hashes.
    """
    profile = raw.get("profile")
    if profile:
        profile = {str(k): profile_value(v) for k, v in profile.items()}  # type: ignore[attr-defined]
    return BehaviourEvent(str(raw["user_id"]), int(raw["ts"]), str(raw["item_id"]),  # type: ignore[call-overload]
                          [str(t) for t in raw.get("item_tags") or ()], str(raw["action"]),  # type: ignore[union-attr]
                          profile, raw.get("label"))  # type: ignore[arg-type]


def device_of(raw: Mapping[str, object]) -> str:
    return str(raw.get("device_id") or f"dev-{raw['user_id']}")


@dataclass(frozen=True, slots=True)
class DayPlan:
    """One event-time day: each device's events of that day, devices in a fixed order."""

    day: int
    by_device: tuple[tuple[str, tuple[BehaviourEvent, ...]], ...]

    @property
    def events(self) -> int:
        return sum(len(e) for _, e in self.by_device)


def plan_days(events: Iterable[Mapping[str, object]], max_per_message: int = 5000) -> list[DayPlan]:
    """Group events by (event-time day, device), deterministic for the same input."""
    days: dict[int, dict[str, list[BehaviourEvent]]] = {}
    for raw in events:
        event = to_event(raw)
        days.setdefault(event.ts // DAY, {}).setdefault(device_of(raw), []).append(event)
    plans = []
    for day in sorted(days):
        chunks = []
        for device in sorted(days[day]):
            evs = sorted(days[day][device], key=lambda e: (e.ts, e.item_id, e.action))
            chunks += [(device, tuple(evs[i:i + max_per_message])) for i in range(0, len(evs), max_per_message)]
        plans.append(DayPlan(day, tuple(chunks)))
    return plans


class Publisher:
    """Sends a namespace's replay traffic: device actions, up-tunnel envelopes, end-of-day ticks."""

    def __init__(self, settings: Settings, topics: Topics) -> None:
        self.settings, self.topics = settings, topics
        self._producer = producer(settings)

    async def __aenter__(self) -> Publisher:
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._producer.stop()

    async def send(self, topic: str, key: bytes, record: Record, partition: int | None = None) -> None:
        await self._producer.send(self.topics.name(topic), encode(record), key=key, partition=partition)

    async def send_raw(self, topic: str, key: bytes, value: bytes) -> None:
        """Bytes as they are, no schema (chaos runs feed malformed messages this way)."""
        await self._producer.send(self.topics.name(topic), value, key=key)

    async def flush(self) -> None:
        """Out now, not at the next linger."""
        await self._producer.flush()

    async def actions(self, plan: DayPlan) -> None:
        """The user's side: each device's events of the day, keyed by the device's pseudonym."""
        for device, events in plan.by_device:
            key = device_pseudonym(self.settings.pseudonym_key, device).encode()
            await self.send("actions", key, DeviceActions(device, list(events), plan.day))
        await self._producer.flush()

    async def past(self, by_device: Sequence[tuple[str, Sequence[BehaviourEvent]]]) -> None:
        """Each device's behaviour before the replay starts on it (its history, not samples)."""
        for device, events in by_device:
            key = device_pseudonym(self.settings.pseudonym_key, device).encode()
            await self.send("actions", key, DevicePast(device, list(events)))
        await self._producer.flush()

    async def up(self, plan: DayPlan) -> None:
        """Cloud-only replays: the devices' aggregated envelopes straight onto the up-tunnel."""
        for device, events in plan.by_device:
            await self.send("up", device.encode(), UpEnvelope(device, list(events), events[-1].ts))
        await self._producer.flush()

    async def day_end(self, topic: str, day: int) -> None:
        """An end-of-day tick on every partition of `topic`."""
        for partition in range(self.topics[topic].partitions):
            await self.send(topic, b"day-end", DayEnd(day), partition=partition)
        await self._producer.flush()


class Progress:
    """A quiet one-line progress bar on stderr (only when it is a terminal, or forced)."""

    def __init__(self, total: int, label: str, force: bool = False) -> None:
        self.total, self.label, self.done = max(total, 1), label, 0
        self.enabled = force or sys.stderr.isatty()
        self.start = time.monotonic()

    def advance(self, n: int, note: str = "") -> None:
        self.done += n
        if self.enabled:
            rate = self.done / max(time.monotonic() - self.start, 1e-9)
            width = 30
            filled = int(width * self.done / self.total)
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                             f"{self.done}/{self.total} {rate:,.0f}/s {note}   ")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


@dataclass
class Checkpoint:
    """Last completed day of a replay, so an interrupted replay resumes where it stopped."""

    path: Path

    def load(self) -> int | None:
        try:
            return int(json.loads(self.path.read_text())["last_day"])
        except (OSError, ValueError, KeyError):
            return None

    def save(self, day: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"last_day": day, "saved_at": time.time()}))
        os.replace(tmp, self.path)


async def replay_days(
    plans: Sequence[DayPlan],
    publish_day: Callable[[DayPlan], Awaitable[None]],
    end_of_day: Callable[[DayPlan], Awaitable[None]] | None = None,
    checkpoint: Checkpoint | None = None,
    speed: float = 0.0,
    progress: Progress | None = None,
) -> int:
    """Publish day by day; `end_of_day` runs after each day (barrier, ticks, pulls).

    `speed` 0 is as fast as possible; otherwise event-time days are paced at `speed`×
    real time (86,400 / speed seconds per day).
    """
    done = checkpoint.load() if checkpoint else None
    published = 0
    for plan in plans:
        if done is not None and plan.day <= done:
            continue
        started = time.monotonic()
        await publish_day(plan)
        if end_of_day is not None:
            await end_of_day(plan)
        if checkpoint is not None:
            checkpoint.save(plan.day)
        published += plan.events
        if progress is not None:
            progress.advance(plan.events, f"day {plan.day}")
        if speed > 0:
            await asyncio.sleep(max(0.0, DAY / speed - (time.monotonic() - started)))
    return published
