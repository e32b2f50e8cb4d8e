"""User-vector agent (Algorithm 1, incremental) and the neighbour side of the sample query."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import faust

from agents.context import Accepted, CloudContext, drop, partition_for, put, segments
from core.features import FeatureSpace
from core.matching import most_recent_unserved
from core.sample import DAY, Sample
from core.vectors import UserAccumulator
from streams.schemas import (
    DayEnd, IdList, MatchRequest, NeighbourQuery, NeighbourSamples, RecentSamples, SampleBatch, SampleBatchV1,
    SampleRecord, SampleSet, UserState, UserStateV1, UserVector,
)

KEEP_RECENT = 500  # in-window samples kept per user (newest)
DEDUP_DAYS = 14  # how long a counted sample id is remembered against redelivery


def to_accumulator(state: UserState | UserStateV1 | None) -> UserAccumulator:
    """The running sum; the user's in-window samples are kept apart (`RecentSamples`)."""
    if state is None:
        return UserAccumulator()
    return UserAccumulator(state.count, list(state.total), state.last_ts,
                           dict(zip(state.counted_ids, state.counted_ts, strict=True)))


def to_state(acc: UserAccumulator, device: str) -> UserState:
    return UserState(acc.count, acc.total, acc.last_ts, list(acc.counted), list(acc.counted.values()), device)


def fold(state: UserState | UserStateV1 | None, samples: list[Sample], space: FeatureSpace, window_days: int,
         device: str) -> tuple[UserState, list[Sample]]:
    """Pure step: previous state + samples → new state and the samples that were new."""
    acc = to_accumulator(state)
    fresh = acc.add(samples, space)
    acc.prune(acc.last_ts, window_days, DEDUP_DAYS, KEEP_RECENT)
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


@dataclass(frozen=True, slots=True)
class UserUpdate:
    """What one batch does to one user: computed first, published, then written."""

    user: str
    partition: int  # the user's samples partition: every changelog record of the user goes there
    state: UserState
    vector: UserVector | None  # None: no sample, nothing to publish
    days: dict[int, list[Sample]]  # in-window days rewritten
    expired: range  # days that left the window


def register(ctx: CloudContext) -> faust.Table:
    users = ctx.table("users")
    days_table = ctx.table("recent")
    served = ctx.table("served")
    s = ctx.settings
    partitions = ctx.topics["samples"].partitions

    @ctx.app.agent(ctx.topic("samples"), name="user-vectors")
    async def user_vectors(stream: faust.StreamT) -> None:
        async for events in ctx.batches(stream):
            accepted = await ctx.accept_all("vectors", events, "samples")
            for run, tick in segments(accepted, DayEnd):
                await _fold_users(run)
                if tick is not None:
                    assert isinstance(tick[1], DayEnd)
                    await _rematch_active(tick[0].message.partition, tick[1].day)
            ctx.stage("vectors").processed += len(accepted)

    async def _fold_users(run: list[Accepted]) -> None:
        """One state read, one vector and one state write per user, however many batches it had."""
        by_user: dict[str, list[Accepted]] = {}
        for item in run:
            assert isinstance(item[1], SampleBatch | SampleBatchV1)
            by_user.setdefault(item[1].user, []).append(item)
        updates = [_fold_user(user, items) for user, items in by_user.items()]
        for update in updates:  # output before state: a crash in between re-publishes, never loses
            if update.vector is not None:
                await ctx.send("user-vectors", update.user, update.vector)
        for update in updates:
            await _write(update)

    def _fold_user(user: str, items: list[Accepted]) -> UserUpdate:
        batches = [batch for _, batch in items if isinstance(batch, SampleBatch | SampleBatchV1)]
        samples = [x for batch in batches for x in batch.to_samples()]
        before = users.get(user.encode())
        device = next((b.device for b in reversed(batches) if b.device), "")
        state, fresh = fold(before, samples, s.features, s.match_window_days, device)
        ctx.stage("vectors").extra["duplicate_samples"] += len(samples) - len(fresh)
        vector = vector_to_publish(user, state, len(samples))
        window = window_of(state.last_ts, s.match_window_days)
        # a v1 state still holds its samples: they move to day keys on its first write
        legacy = [r.to_sample() for r in before.recent] if isinstance(before, UserStateV1) else []
        days = merge_recent(lambda day: _stored(user, day), [*legacy, *fresh], window)
        old = window_of(before.last_ts, s.match_window_days) if before is not None else range(0)
        return UserUpdate(user, items[-1][0].message.partition, state, vector, days,
                          range(old.start, min(old.stop, window.start)))

    def _stored(user: str, day: int) -> list[Sample]:
        stored = days_table.get(recent_key(user, day))
        return stored.samples.to_samples(user) if stored is not None else []

    async def _write(update: UserUpdate) -> None:
        await put(users, update.partition, update.user.encode(), update.state)
        for day, samples in update.days.items():
            await put(days_table, update.partition, recent_key(update.user, day),
                      RecentSamples(SampleSet.of(samples)))
        for day in update.expired:
            await drop(days_table, update.partition, recent_key(update.user, day))

    def recent_samples(user: str, state: UserState | UserStateV1) -> list[Sample]:
        """The user's newest in-window samples, oldest first (what `most_recent_unserved` takes)."""
        if isinstance(state, UserStateV1):
            return [r.to_sample() for r in state.recent]
        days = window_of(state.last_ts, s.match_window_days)
        return [x for day in days for x in _stored(user, day)][-KEEP_RECENT:]

    async def _rematch_active(partition: int, day: int) -> None:
        """End of an event-time day: re-match this partition's users active that day, for tomorrow."""
        active = [k.decode() for k, st in list(users.items())
                  if st is not None and st.last_ts // DAY == day and partition_for(k.decode(), partitions) == partition]
        for user in sorted(active):
            request = MatchRequest(f"rematch-{day}-{user}", user, users[user.encode()].device, day + 1, 0, "rematch")
            await ctx.send("match-requests", user, request)
        ctx.stage("vectors").extra["rematch_requests"] += len(active)

    @ctx.app.agent(ctx.topic("neighbour-queries"), name="neighbour-samples")
    async def neighbour_samples(stream: faust.StreamT) -> None:
        async for event in stream.events():
            query = await ctx.accept("neighbours", event, "neighbour-queries")
            if isinstance(query, NeighbourQuery):
                answer = _answer(query)
                await ctx.send("gather", query.device, answer)
                ctx.stage("neighbours").processed += 1

    def _answer(query: NeighbourQuery) -> NeighbourSamples:
        """Each neighbour's newest in-window samples this device was not served yet.

        Idempotent under redelivery: a query whose request already took samples of a neighbour
        gets exactly those again (marking the next ones as served would lose them for good).
        """
        picked: list[SampleRecord] = []
        for neighbour in query.neighbours:
            state = users.get(neighbour.encode())
            if state is None:
                continue
            recent = recent_samples(neighbour, state)
            served_key = f"{query.device}|{neighbour}".encode()
            before = served.get(served_key) or IdList()
            reqs = before.reqs if len(before.reqs) == len(before.ids) else [""] * len(before.ids)
            taken = {i for i, r in zip(before.ids, reqs, strict=True) if r == query.request_id}
            if taken:  # redelivered: the same answer, newest first as before
                ctx.stage("neighbours").extra["redelivered_queries"] += 1
                picked.extend(SampleRecord.of(c) for c in reversed(recent) if c.sample_id in taken)
                continue
            already = {i for i, ts in zip(before.ids, before.ts, strict=True) if ts >= query.since_ts}
            chosen = most_recent_unserved(recent, already, query.want, query.since_ts)
            if chosen:
                kept = [(i, t, r) for i, t, r in zip(before.ids, before.ts, reqs, strict=True) if t >= query.since_ts]
                kept += [(c.sample_id, c.ts, query.request_id) for c in chosen]
                served[served_key] = IdList([i for i, _, _ in kept], [t for _, t, _ in kept], [r for _, _, r in kept])
                picked.extend(SampleRecord.of(c) for c in chosen)
        return NeighbourSamples(query.request_id, query.device, query.user, query.day, query.parts,
                                picked, query.part, query.neighbours, query.ranks)

    return users
