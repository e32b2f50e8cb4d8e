"""Keyed state the handlers read and write: a Faust table in a worker, a plain dict in tests."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import faust
import msgspec

from agents.context import drop, put
from streams.schemas import Record

V = TypeVar("V", bound=Record)
T = TypeVar("T")


class KeyedState(Protocol[V]):
    """A table of records by key; every write names its changelog partition."""

    def get(self, key: bytes) -> V | None: ...

    def items(self) -> Iterable[tuple[bytes, V]]: ...

    async def put(self, partition: int, key: bytes, value: V) -> None: ...

    async def drop(self, partition: int, key: bytes) -> None: ...


class TableState(Generic[V]):
    """A Faust table written through `agents.context.put`/`drop`: each changelog record on the named partition.

    For agents that take events in batches, where Faust's current event is not each record's.
    """

    def __init__(self, table: faust.Table) -> None:
        self.table = table

    def get(self, key: bytes) -> V | None:
        return self.table.get(key)  # type: ignore[no-any-return]

    def items(self) -> Iterable[tuple[bytes, V]]:
        return list(self.table.items())

    async def put(self, partition: int, key: bytes, value: V) -> None:
        await put(self.table, partition, key, value)

    async def drop(self, partition: int, key: bytes) -> None:
        await drop(self.table, partition, key)


class EventTableState(TableState[V]):
    """A Faust table written Faust's own way (`table[key] = value`), as these agents always wrote it.

    Faust puts the changelog record on the current event's partition, through its send buffer.
    Only for agents that take one event at a time: the current event is then the one whose
    partition the handler names.
    """

    async def put(self, partition: int, key: bytes, value: V) -> None:
        self.table[key] = value

    async def drop(self, partition: int, key: bytes) -> None:
        if key in self.table:
            del self.table[key]


@dataclass
class DictState(Generic[V]):
    """A plain dict (tests, offline runs); `writes` logs each write with its changelog partition."""

    data: dict[bytes, V] = field(default_factory=dict)
    writes: list[tuple[int, bytes, V | None]] = field(default_factory=list)

    def get(self, key: bytes) -> V | None:
        return self.data.get(key)

    def items(self) -> Iterable[tuple[bytes, V]]:
        return list(self.data.items())

    async def put(self, partition: int, key: bytes, value: V) -> None:
        self.writes.append((partition, key, value))
        self.data[key] = value

    async def drop(self, partition: int, key: bytes) -> None:
        if key in self.data:
            self.writes.append((partition, key, None))
            del self.data[key]


def with_(record: T, **changes: Any) -> T:
    """`record` with some fields changed: a msgspec Struct or a dataclass, the rest as they were."""
    if isinstance(record, msgspec.Struct):
        return msgspec.structs.replace(record, **changes)
    return dataclasses.replace(record, **changes)  # type: ignore[type-var]
