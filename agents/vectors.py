"""User-vector agent (Algorithm 1, incremental) and the neighbour side of the sample query."""

from __future__ import annotations

import faust

from agents.context import CloudContext, partition_for
from core.features import FeatureSpace
from core.matching import most_recent_unserved
from core.sample import Sample
from core.vectors import UserAccumulator
from streams.schemas import (
    DayEnd, IdList, MatchRequest, NeighbourQuery, NeighbourSamples, SampleBatch, SampleRecord,
    UserState, UserVector,
)

DAY = 86_400
KEEP_RECENT = 500  # in-window samples kept per user (newest)
DEDUP_DAYS = 14  # how long a counted sample id is remembered against redelivery


def to_accumulator(state: UserState | None) -> UserAccumulator:
    if state is None:
        return UserAccumulator()
    return UserAccumulator(state.count, list(state.total), state.last_ts,
                           dict(zip(state.counted_ids, state.counted_ts, strict=True)),
                           [r.to_sample() for r in state.recent])


def to_state(acc: UserAccumulator, device: str) -> UserState:
    return UserState(acc.count, acc.total, acc.last_ts, list(acc.counted), list(acc.counted.values()),
                     [SampleRecord.of(s) for s in acc.recent], device)


def fold(state: UserState | None, samples: list[Sample], space: FeatureSpace, window_days: int,
         device: str) -> tuple[UserState, int]:
    """Pure step: previous state + samples → new state and how many samples were new."""
    acc = to_accumulator(state)
    fresh = acc.add(samples, space)
    acc.prune(acc.last_ts, window_days, DEDUP_DAYS, KEEP_RECENT)
    return to_state(acc, device or (state.device if state else "")), len(fresh)


def register(ctx: CloudContext) -> faust.Table:
    users = ctx.table("users")
    served = ctx.table("served")
    s = ctx.settings
    partitions = ctx.topics["samples"].partitions

    @ctx.app.agent(ctx.topic("samples"), name="user-vectors")
    async def user_vectors(stream: faust.StreamT) -> None:
        async for event in stream.events():
            record = await ctx.accept("vectors", event, "samples")
            if isinstance(record, SampleBatch):
                key = record.user.encode()
                state, fresh = fold(users.get(key), [r.to_sample() for r in record.samples],
                                    s.features, s.match_window_days, record.device)
                ctx.stage("vectors").extra["duplicate_samples"] += len(record.samples) - fresh
                if fresh:  # output before state: a crash in between re-publishes, never loses
                    vector = UserVector(record.user, [t / state.count for t in state.total],
                                        state.count, state.last_ts)
                    await ctx.send("user-vectors", record.user, vector)
                users[key] = state
            elif isinstance(record, DayEnd):
                await _rematch_active(event.message.partition, record.day)
            if record is not None:
                ctx.stage("vectors").processed += 1

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
            recent = [r.to_sample() for r in state.recent]
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
