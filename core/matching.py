"""Scatter/gather arithmetic of the sample-query system: windows, per-neighbour asks, merging."""

from __future__ import annotations

import math
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from typing import Protocol, TypeVar

from core.sample import DAY, Sample

K = TypeVar("K")


class Stamped(Protocol):
    """What choosing a neighbour's answer reads of a sample: its id and its time."""

    @property
    def sample_id(self) -> str: ...

    @property
    def ts(self) -> int: ...


S = TypeVar("S", bound=Stamped)


def window_start_ts(day: int, window_days: int) -> int:
    """First second of the match window ending with event-time day `day` (inclusive)."""
    return (day - window_days + 1) * DAY


def per_neighbour_ask(capacity: int, neighbours: int) -> int:
    """Samples to ask of each neighbour: an even share of what the device can still take."""
    if capacity <= 0 or neighbours <= 0:
        return 0
    return math.ceil(capacity / neighbours)


def group_by_partition(neighbours: Iterable[str], partition_of: Callable[[str], int]) -> dict[int, list[str]]:
    """Scatter: one query per partition that owns some of the neighbours (rank order kept)."""
    groups: dict[int, list[str]] = {}
    for n in neighbours:
        groups.setdefault(partition_of(n), []).append(n)
    return groups


def most_recent_unserved(recent: Sequence[S], served: Container[str], want: int, since_ts: int) -> list[S]:
    """A neighbour's answer: its newest in-window samples this device has not been sent.

    Reads only ids and times, newest first, and stops at `want`: `recent` may build its items
    on demand (the cloud keeps up to `core.vectors.KEEP_RECENT` a user as columns).
    """
    out = []
    for sample in reversed(recent):  # `recent` is oldest first
        if len(out) >= want:
            break
        if sample.ts >= since_ts and sample.sample_id not in served:
            out.append(sample)
    return out


def merge_answers(
    by_neighbour: Mapping[str, Sequence[Sample]],
    rank: Sequence[str],
    already_sent: Mapping[str, object] | set[str],
    capacity: int,
) -> list[Sample]:
    """Gather: round-robin over neighbours in KNN rank order, newest first, dedup by sample id."""
    queues = [list(by_neighbour.get(n, ())) for n in rank]
    seen = set(already_sent)
    out: list[Sample] = []
    depth = 0
    while len(out) < capacity and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and q[depth].sample_id not in seen:
                seen.add(q[depth].sample_id)
                out.append(q[depth])
                if len(out) >= capacity:
                    break
        depth += 1
    return out
