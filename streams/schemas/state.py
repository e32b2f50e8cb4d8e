"""Changelog state: Faust table values travel on changelog topics, so they are wire records too."""

from __future__ import annotations

from typing import ClassVar

from msgspec import field

from streams.schemas.codec import Finite, Record, register
from streams.schemas.messages import SampleRecord, SampleSet


class HistoryState(Record):
    """Ingest: a user's recent behaviour (hashed) and the ids of recently emitted samples."""

    KIND: ClassVar[str] = "state.history"
    items: list[int] = field(default_factory=list)
    tags: list[list[int]] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)


class UserStateV1(Record):
    """User-vector agent, v1: its in-window samples inside the state (read by old changelogs only).

    Every sample batch re-encoded all of them into the changelog: the ingest bottleneck.
    """

    KIND: ClassVar[str] = "state.user"
    count: int
    total: list[Finite]
    last_ts: int
    counted_ids: list[str]
    counted_ts: list[int]
    recent: list[SampleRecord]
    device: str = ""


class UserState(Record):
    """User-vector agent: count, feature sum and counted sample ids (samples: `RecentSamples`)."""

    KIND: ClassVar[str] = "state.user"
    VERSION: ClassVar[int] = 2
    count: int
    total: list[Finite]
    last_ts: int
    counted_ids: list[str]
    counted_ts: list[int]
    device: str = ""


class RecentSamples(Record):
    """User-vector agent: one user's in-window samples of one event-time day, oldest first.

    One table key per (user, day), so a batch rewrites only the days it touched.
    """

    KIND: ClassVar[str] = "state.recent"
    samples: SampleSet


class IdList(Record):
    """A list of sample ids (served-to-device sets, etc.)."""

    KIND: ClassVar[str] = "state.ids"
    ids: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    reqs: list[str] = field(default_factory=list)  # the request that took each id (served sets)


class MatchCache(Record):
    """Match agent: a user's neighbours per event-time day, kept for the match window."""

    KIND: ClassVar[str] = "state.matches"
    days: list[int] = field(default_factory=list)
    neighbours: list[list[str]] = field(default_factory=list)


class PendingGather(Record):
    """Assemble agent: one open scatter-gather.

    Its answered parts wait under their own keys (`NeighbourSamples` in the gather-parts table);
    `got`, `neighbours`, `samples` and `ranks` hold parts only in state written before that.
    """

    KIND: ClassVar[str] = "state.pending"
    request_id: str
    day: int
    parts: int
    got: list[int]
    neighbours: list[str]
    samples: list[SampleRecord]
    ranks: list[int] = field(default_factory=list)


class DeviceState(Record):
    """Assemble agent: the device's user, today's quota, open gathers and the days it was sent samples.

    The sent ids live in the sent table, one key per (device, day) listed in `sent_days`;
    `sent_ids`/`sent_ts` hold them only in state written before that (read, then emptied).
    """

    KIND: ClassVar[str] = "state.device"
    user: str = ""
    day: int = -1
    used: int = 0
    sent_ids: list[str] = field(default_factory=list)
    sent_ts: list[int] = field(default_factory=list)
    pending: list[PendingGather] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # recently answered request ids: a redelivered pull is a no-op
    sent_days: list[int] = field(default_factory=list)


register(HistoryState, UserStateV1, UserState, RecentSamples, IdList, MatchCache, PendingGather, DeviceState)
