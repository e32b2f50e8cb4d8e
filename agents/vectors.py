"""User-vector agent (Algorithm 1, incremental): fold sample batches, publish vectors, keep recent samples."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import overload

import faust

from agents.context import CloudContext, partition_for, partitioned, segments
from agents.plan import Plan, perform
from agents.state import KeyedState, TableState
from core.features import FeatureSpace
from core.sample import DAY, Sample
from core.vectors import KEEP_RECENT, UserAccumulator, absorb
from streams.schemas import (
    DayEnd,
    MatchRequest,
    RecentSamples,
    SampleBatch,
    SampleBatchV1,
    SampleSet,
    UserState,
    UserStateV1,
    UserVector,
)
from streams.settings import Settings

AnyUserState = UserState | UserStateV1
AnySampleBatch = SampleBatch | SampleBatchV1


def to_accumulator(state: AnyUserState | None) -> UserAccumulator:
    """The running sum; the user's in-window samples are kept apart (`RecentSamples`)."""
    if state is None:
        return UserAccumulator()
    return UserAccumulator(state.count, list(state.total), state.last_ts,
                           dict(zip(state.counted_ids, state.counted_ts, strict=True)))


def to_state(acc: UserAccumulator, device: str) -> UserState:
    return UserState(acc.count, acc.total, acc.last_ts, list(acc.counted), list(acc.counted.values()), device)


def fold_state(state: AnyUserState | None, samples: list[Sample], space: FeatureSpace, window_days: int,
               device: str) -> tuple[UserState, list[Sample]]:
    """`core.vectors.fold` on the stored state: previous state + samples → new state and the samples that were new."""
    acc = to_accumulator(state)
    fresh = absorb(acc, samples, space, window_days)
    return to_state(acc, device or (state.device if state else "")), fresh


def vector_to_publish(user: str, state: UserState, received: int) -> UserVector | None:
    """The user's vector after a batch of `received` samples; None when there is nothing to say.

    Also after a batch whose samples were all counted before (a redelivery): the vector's
    first publish may be what a crash lost, since the producer keeps no order between the
    vector's partition and the state's changelog. Publishing it again is harmless.
    """
    if not received or not state.count:
        return None
    return UserVector(user, [t / state.count for t in state.total], state.count, state.last_ts)


def window_of(last_ts: int, window_days: int) -> range:
    """The event-time days whose samples a user keeps: the match window ending on its newest day."""
    last = last_ts // DAY
    return range(last - window_days + 1, last + 1)


def recent_key(user: str, day: int) -> bytes:
    return f"{user}|{day}".encode()


def merge_recent(stored: Callable[[int], Sequence[Sample]], fresh: Sequence[Sample],
                 window: range) -> dict[int, list[Sample]]:
    """New content of each in-window day that got samples: oldest first, at most KEEP_RECENT.

    Capping every day at the newest KEEP_RECENT keeps, read back across the days, exactly
    the user's newest KEEP_RECENT in-window samples (what one list in the state kept).
    """
    by_day: dict[int, list[Sample]] = {}
    for sample in fresh:
        if sample.day in window:
            by_day.setdefault(sample.day, []).append(sample)
    return {day: sorted([*stored(day), *new], key=lambda x: (x.ts, x.sample_id))[-KEEP_RECENT:]
            for day, new in by_day.items()}


def stored_samples(recent: KeyedState[RecentSamples], user: str, day: int) -> list[Sample]:
    stored = recent.get(recent_key(user, day))
    return stored.samples.to_samples(user) if stored is not None else []


@dataclass(frozen=True, slots=True)
class StoredSample:
    """One of a user's stored samples by id and time; the whole sample is built only when served."""

    sample_id: str
    ts: int
    user: str
    stored: SampleSet
    index: int

    def sample(self) -> Sample:
        return self.stored.sample_at(self.index, self.user)


class RecentWindow(Sequence[StoredSample]):
    """A user's newest in-window samples, oldest first, over the stored day sets without copying them.

    Answering a neighbour query reads a few newest ids of each of K neighbours: building all of
    their up to KEEP_RECENT samples was most of a pull's cost in the cloud.
    """

    def __init__(self, user: str, day_sets: Sequence[SampleSet], keep: int = KEEP_RECENT) -> None:
        self.user, self._sets = user, [x for x in day_sets if len(x)]
        self._ends = list(accumulate(len(x) for x in self._sets))
        total = self._ends[-1] if self._ends else 0
        self._skip = max(0, total - keep)  # the oldest beyond `keep` are out
        self._len = total - self._skip

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, i: int) -> StoredSample: ...
    @overload
    def __getitem__(self, i: slice) -> list[StoredSample]: ...
    def __getitem__(self, i: int | slice) -> StoredSample | list[StoredSample]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._len))]
        if not -self._len <= i < self._len:
            raise IndexError(i)
        at = (i % self._len) + self._skip
        n = bisect_right(self._ends, at)
        stored, j = self._sets[n], at - (self._ends[n - 1] if n else 0)
        return StoredSample(stored.ids[j], stored.ts[j], self.user, stored, j)


def recent_window(recent: KeyedState[RecentSamples], user: str, state: AnyUserState,
                  window_days: int) -> RecentWindow:
    """The user's newest in-window samples, oldest first (what `most_recent_unserved` takes)."""
    if isinstance(state, UserStateV1):
        return RecentWindow(user, [SampleSet.of([r.to_sample() for r in state.recent])])
    days = window_of(state.last_ts, window_days)
    day_sets = [stored.samples for day in days if (stored := recent.get(recent_key(user, day))) is not None]
    return RecentWindow(user, day_sets)


@dataclass(frozen=True, slots=True)
class UserUpdate:
    """What one batch does to one user: computed first, published, then written."""

    user: str
    partition: int  # the user's samples partition: every changelog record of the user goes there
    state: UserState
    vector: UserVector | None  # None: no sample, nothing to publish
    days: dict[int, list[Sample]]  # in-window days rewritten
    expired: range  # days that left the window
    duplicates: int  # samples counted before (redelivered)


def fold_users(run: Sequence[tuple[int, AnySampleBatch]], users: KeyedState[AnyUserState],
               recent: KeyedState[RecentSamples], settings: Settings) -> Plan:
    """One state read, one vector and one state write per user, however many batches it had."""
    by_user: dict[str, list[tuple[int, AnySampleBatch]]] = {}
    for item in run:
        by_user.setdefault(item[1].user, []).append(item)
    updates = [fold_user(user, items, users, recent, settings) for user, items in by_user.items()]
    plan = Plan()
    for update in updates:
        plan.count("duplicate_samples", update.duplicates)
    for update in updates:  # output before state: a crash in between re-publishes, never loses
        if update.vector is not None:
            plan.send("user-vectors", update.user, update.vector)
    for update in updates:
        write_update(plan, update, users, recent)
    return plan


def fold_user(user: str, items: Sequence[tuple[int, AnySampleBatch]], users: KeyedState[AnyUserState],
              recent: KeyedState[RecentSamples], settings: Settings) -> UserUpdate:
    """The user's state, vector and in-window days after its batches (`items`, with their partitions)."""
    window_days = settings.match_window_days
    batches = [batch for _, batch in items]
    samples = [x for batch in batches for x in batch.to_samples()]
    before = users.get(user.encode())
    device = next((b.device for b in reversed(batches) if b.device), "")
    state, fresh = fold_state(before, samples, settings.features, window_days, device)
    vector = vector_to_publish(user, state, len(samples))
    window = window_of(state.last_ts, window_days)
    # a v1 state still holds its samples: they move to day keys on its first write
    legacy = [r.to_sample() for r in before.recent] if isinstance(before, UserStateV1) else []
    days = merge_recent(lambda day: stored_samples(recent, user, day), [*legacy, *fresh], window)
    old = window_of(before.last_ts, window_days) if before is not None else range(0)
    return UserUpdate(user, items[-1][0], state, vector, days, range(old.start, min(old.stop, window.start)),
                      len(samples) - len(fresh))


def write_update(plan: Plan, update: UserUpdate, users: KeyedState[AnyUserState],
                 recent: KeyedState[RecentSamples]) -> None:
    plan.put(users, update.partition, update.user.encode(), update.state)
    for day, samples in update.days.items():
        plan.put(recent, update.partition, recent_key(update.user, day), RecentSamples(SampleSet.of(samples)))
    for day in update.expired:
        plan.drop(recent, update.partition, recent_key(update.user, day))


def rematch_active(partition: int, day: int, users: KeyedState[AnyUserState], partitions: int) -> Plan:
    """End of an event-time day: re-match this partition's users active that day, for tomorrow."""
    active = [k.decode() for k, st in users.items()
              if st is not None and st.last_ts // DAY == day and partition_for(k.decode(), partitions) == partition]
    plan = Plan()
    for user in sorted(active):
        state = users.get(user.encode())
        assert state is not None
        plan.send("match-requests", user, MatchRequest(f"rematch-{day}-{user}", user, state.device, day + 1, 0,
                                                       "rematch"))
    plan.count("rematch_requests", len(active))
    return plan


@dataclass(frozen=True, slots=True)
class UserTables:
    """The user-vector agent's state, which the neighbour-samples and match agents read."""

    users: TableState[AnyUserState]
    recent: TableState[RecentSamples]


def register(ctx: CloudContext) -> UserTables:
    tables = UserTables(TableState(ctx.table("users")), TableState(ctx.table("recent")))
    partitions = ctx.topics["samples"].partitions

    @ctx.app.agent(ctx.topic("samples"), name="user-vectors")
    async def user_vectors(stream: faust.StreamT) -> None:
        async for events in ctx.batches(stream):
            accepted = await ctx.accept_all("vectors", events, "samples")
            for run, tick in segments(accepted, DayEnd):
                batches = partitioned(run, (SampleBatch, SampleBatchV1))
                await perform(ctx, "vectors", fold_users(batches, tables.users, tables.recent, ctx.settings))
                if tick is not None:
                    assert isinstance(tick[1], DayEnd)
                    rematch = rematch_active(tick[0].message.partition, tick[1].day, tables.users, partitions)
                    await perform(ctx, "vectors", rematch)
            ctx.stage("vectors").processed += len(accepted)

    return tables
