"""Every private Faust and aiokafka internal this project relies on, in one place.

Each is something the libraries do not expose publicly (a metadata refresh, a group's committed
offsets without joining it, the fetcher's positions, the changelog callback of a table). An upgrade
may move any of them; `await check()` looks for all of them and `tests/streams/test_internals.py` runs it,
so a change fails a test by name instead of quietly switching a guard off. At run time a missing
internal raises `InternalChanged` (never a silent fallback).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import aiokafka
import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.consumer.subscription_state import Assignment, SubscriptionState, TopicPartitionState
from faust.tables.manager import TableManager
from faust.transport.drivers import aiokafka as faust_aiokafka


class InternalChanged(RuntimeError):
    """A private library internal this project uses is gone or has another shape."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"{what}: {detail} (aiokafka {aiokafka.__version__}, faust {faust.__version__}); "
                         "see streams/internals.py")


def _attribute(obj: object, name: str, what: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        raise InternalChanged(what, f"{type(obj).__name__} has no {name}") from None


# --- aiokafka ---


async def refresh_metadata(consumer: AIOKafkaConsumer) -> None:
    """Ask the cluster for fresh metadata now (aiokafka has no public refresh)."""
    client = _attribute(consumer, "_client", "AIOKafkaConsumer._client")
    await _attribute(client, "force_metadata_update", "AIOKafkaClient.force_metadata_update")()


async def fetch_committed(consumer: AIOKafkaConsumer, parts: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
    """A started consumer's group's committed offsets (OffsetFetch through its coordinator, without
    joining the group); -1 where none. aiokafka's admin call cannot parse Tansu's reply."""
    coordinator = _attribute(consumer, "_coordinator", "AIOKafkaConsumer._coordinator")
    if coordinator is None:
        raise RuntimeError("committed_offsets needs a started consumer with a group_id")
    wanted = set(parts)
    found = await coordinator.fetch_committed_offsets(wanted)
    return {tp: (found[tp].offset if tp in found else -1) for tp in wanted}


def set_fetch_max_wait(consumer: AIOKafkaConsumer, ms: int) -> None:
    """How long an idle fetch waits at the broker; read at start(), so set it before."""
    _attribute(consumer, "_fetch_max_wait_ms", "AIOKafkaConsumer._fetch_max_wait_ms")
    consumer._fetch_max_wait_ms = ms  # noqa: SLF001 - checked just above


def fetch_positions(consumer: AIOKafkaConsumer | None) -> dict[TopicPartition, int]:
    """The fetcher's position of each assigned partition that has one ({} before an assignment).

    Used to detect records a fetch skipped. Not started or not assigned yet reads as {}; a changed
    internal raises, so the guard cannot switch itself off after an upgrade.
    """
    if consumer is None:
        return {}
    subscription_state = _attribute(consumer, "_subscription", "AIOKafkaConsumer._subscription")
    subscription = _attribute(subscription_state, "subscription", "SubscriptionState.subscription")
    if subscription is None:
        return {}
    assignment = _attribute(subscription, "assignment", "Subscription.assignment")
    if assignment is None:
        return {}
    states = {tp: assignment.state_value(tp) for tp in assignment.tps}
    return {tp: s.position for tp, s in states.items() if s is not None and s.has_valid_position}


# --- Faust ---


def worker_consumer(consumer: faust_aiokafka.Consumer) -> AIOKafkaConsumer | None:
    """The aiokafka consumer behind a Faust consumer (None before its thread made one)."""
    thread = _attribute(consumer, "_thread", "Consumer._thread")
    ensure = _attribute(thread, "_ensure_consumer", "AIOKafkaConsumerThread._ensure_consumer")
    try:
        return ensure()
    except faust.exceptions.ConsumerNotStarted:
        return None


def changelog_topics(app: faust.App) -> Any:
    """Names of every changelog topic of the app's tables (a mapping keyed by topic name)."""
    return _attribute(app.tables, "_changelogs", "TableManager._changelogs")


def changelog_callback(table: faust.Table) -> Callable[..., Any]:
    """What Faust's own table writes pass as the changelog send's callback (it tracks offsets)."""
    return _attribute(table, "_on_changelog_sent", "Table._on_changelog_sent")  # type: ignore[no-any-return]


# Faust methods this project overrides (streams/app.py): name → parameters they must still take
OVERRIDDEN = {
    (faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer"): ("self", "transport"),
    (faust_aiokafka.AIOKafkaConsumerThread, "_highwaters"): ("self", "partitions"),
}


async def check() -> list[str]:
    """Every internal above, looked up on the installed libraries' classes: the problems found.

    Async because an aiokafka consumer can only be built inside a running loop (it is never started).
    """
    problems: list[str] = []

    def need(owner: Any, name: str, kind: str = "attribute") -> None:
        where = f"{getattr(owner, '__name__', owner)}.{name}"
        if kind == "coroutine":
            if not inspect.iscoroutinefunction(getattr(owner, name, None)):
                problems.append(f"{where} is not a coroutine function")
        elif kind == "callable":
            if not callable(getattr(owner, name, None)):
                problems.append(f"{where} is not callable")
        elif not hasattr(owner, name):
            problems.append(f"{where} is missing")

    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")  # never started: no connection
    for name in ("_client", "_fetch_max_wait_ms", "_subscription", "_coordinator"):
        need(consumer, name)
    need(type(getattr(consumer, "_client", None)), "force_metadata_update", "callable")  # returns a future
    await consumer.stop()
    need(GroupCoordinator, "fetch_committed_offsets", "coroutine")
    need(SubscriptionState, "subscription")
    need(Assignment, "state_value", "callable")
    need(Assignment, "tps")
    need(TopicPartitionState, "position")
    need(TopicPartitionState, "has_valid_position")
    need(faust_aiokafka.AIOKafkaConsumerThread, "_ensure_consumer", "callable")
    if "_thread" not in getattr(faust_aiokafka.Consumer, "__annotations__", {}):
        problems.append("faust's aiokafka Consumer no longer declares _thread")
    need(faust.Table, "_on_changelog_sent", "callable")
    if "_changelogs" not in inspect.getsource(TableManager.__init__):
        problems.append("TableManager.__init__ no longer sets _changelogs")
    for (owner, name), params in OVERRIDDEN.items():
        method = getattr(owner, name, None)
        if method is None:
            problems.append(f"{owner.__name__}.{name} (overridden in streams/app.py) is missing")
        elif tuple(inspect.signature(method).parameters) != params:
            problems.append(f"{owner.__name__}.{name} takes {tuple(inspect.signature(method).parameters)}, "
                            f"streams/app.py overrides it as {params}")
    return problems
