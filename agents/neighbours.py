"""Neighbour-samples agent: the neighbour side of the sample query, on the partition that owns them."""

from __future__ import annotations

from collections.abc import Sequence

import faust

from agents.context import CloudContext
from agents.plan import Plan, perform
from agents.state import EventTableState, KeyedState
from agents.vectors import AnyUserState, StoredSample, UserTables, recent_window
from core.matching import most_recent_unserved
from streams.schemas import IdList, NeighbourQuery, NeighbourSamples, RecentSamples, SampleRecord
from streams.settings import Settings


def served_key(device: str, neighbour: str) -> bytes:
    return f"{device}|{neighbour}".encode()


def answer(query: NeighbourQuery, partition: int, users: KeyedState[AnyUserState],
           recent: KeyedState[RecentSamples], served: KeyedState[IdList], settings: Settings) -> Plan:
    """Each neighbour's newest in-window samples this device was not served yet, to the device's gather.

    Idempotent under redelivery: a query whose request already took samples of a neighbour
    gets exactly those again (marking the next ones as served would lose them for good).
    The served sets are written before the answer is sent, as they always were.
    """
    plan = Plan()
    marked: dict[bytes, IdList] = {}  # served sets this query rewrites, as a later read must see them
    picked: list[SampleRecord] = []
    for neighbour in query.neighbours:
        state = users.get(neighbour.encode())
        if state is None:
            continue
        key = served_key(query.device, neighbour)
        recent_of = recent_window(recent, neighbour, state, settings.match_window_days)
        chosen, redelivered, after = pick(query, recent_of, marked.get(key) or served.get(key) or IdList())
        if redelivered:
            plan.count("redelivered_queries")
        if after is not None:
            marked[key] = after
            plan.put(served, partition, key, after)
        picked.extend(chosen)
    plan.send("gather", query.device, NeighbourSamples(query.request_id, query.device, query.user, query.day,
                                                       query.parts, picked, query.part, query.neighbours,
                                                       query.ranks))
    return plan


def pick(query: NeighbourQuery, recent: Sequence[StoredSample],
         before: IdList) -> tuple[list[SampleRecord], bool, IdList | None]:
    """One neighbour's samples for the query (newest first), whether it is a redelivery, the new served set.

    The served set is None when nothing changes: a redelivered query, or nothing left to serve.
    """
    reqs = before.reqs if len(before.reqs) == len(before.ids) else [""] * len(before.ids)
    taken = {i for i, r in zip(before.ids, reqs, strict=True) if r == query.request_id}
    if taken:  # redelivered: the same answer, newest first as before
        return [SampleRecord.of(c.sample()) for c in reversed(recent) if c.sample_id in taken], True, None
    already = {i for i, ts in zip(before.ids, before.ts, strict=True) if ts >= query.since_ts}
    chosen = most_recent_unserved(recent, already, query.want, query.since_ts)
    if not chosen:
        return [], False, None
    kept = [(i, t, r) for i, t, r in zip(before.ids, before.ts, reqs, strict=True) if t >= query.since_ts]
    kept += [(c.sample_id, c.ts, query.request_id) for c in chosen]
    after = IdList([i for i, _, _ in kept], [t for _, t, _ in kept], [r for _, _, r in kept])
    return [SampleRecord.of(c.sample()) for c in chosen], False, after


def register(ctx: CloudContext, tables: UserTables) -> None:
    served = EventTableState[IdList](ctx.table("served"))

    @ctx.app.agent(ctx.topic("neighbour-queries"), name="neighbour-samples")
    async def neighbour_samples(stream: faust.StreamT) -> None:
        async for event in stream.events():
            query = await ctx.accept("neighbours", event, "neighbour-queries")
            if isinstance(query, NeighbourQuery):
                plan = answer(query, event.message.partition, tables.users, tables.recent, served, ctx.settings)
                await perform(ctx, "neighbours", plan)
                ctx.stage("neighbours").processed += 1
