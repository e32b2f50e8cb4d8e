"""Match agent: KNN over the vector index, cached per event-time day, scatter to neighbours' partitions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import faust

from agents.context import CloudContext, partition_for
from agents.index import Neighbour
from agents.plan import Plan, perform
from agents.state import EventTableState, KeyedState
from agents.vectors import AnyUserState
from core.matching import group_by_partition, per_neighbour_ask, window_start_ts
from streams.schemas import MatchCache, MatchRequest, MatchResult, NeighbourQuery, NeighbourSamples
from streams.settings import Settings

Knn = Callable[[str, int], Awaitable[tuple[list[str], list[float]]]]  # (user, day) → neighbours, scores
Search = Callable[..., Awaitable[Sequence[Neighbour]]]  # VectorIndex.search, called off the event loop


def cached(cache: MatchCache | None, day: int) -> list[str] | None:
    if cache is None or day not in cache.days:
        return None
    return cache.neighbours[cache.days.index(day)]


def remember(cache: MatchCache | None, day: int, neighbours: list[str], window_days: int) -> MatchCache:
    """Keep the last `window_days` days of matching results (paper: 7)."""
    pairs = dict(zip(cache.days, cache.neighbours, strict=True)) if cache else {}
    pairs[day] = neighbours
    kept = sorted(d for d in pairs if d > day - window_days)
    return MatchCache(kept, [pairs[d] for d in kept])


async def on_request(request: MatchRequest, partition: int, matches: KeyedState[MatchCache], knn: Knn,
                     settings: Settings, partitions: int) -> Plan:
    """The user's neighbours for the day (cached, or KNN then cached), scattered when there is capacity."""
    plan = Plan()
    neighbours = await neighbours_for(request, partition, matches, knn, settings, plan)
    if request.capacity > 0:
        scatter(request, neighbours, settings, partitions, plan)
    return plan


async def neighbours_for(request: MatchRequest, partition: int, matches: KeyedState[MatchCache], knn: Knn,
                         settings: Settings, plan: Plan) -> list[str]:
    """A pull's match is cached per day; a re-match always searches again (the day's data is complete)."""
    key = request.user.encode()
    cache = matches.get(key)
    hit = cached(cache, request.day) if request.reason != "rematch" else None
    if hit is not None:
        plan.count("cache_hits")
        return hit
    neighbours, scores = await knn(request.user, request.day)
    asof = request.day - 1 if request.reason == "rematch" else request.day
    # output before state: a cached match is always on the matches topic (the audit trail)
    plan.send("matches", request.user, MatchResult(request.user, request.day, neighbours, scores, asof))
    plan.put(matches, partition, key, remember(cache, request.day, neighbours, settings.match_window_days))
    return neighbours


async def knn(user: str, day: int, users: KeyedState[AnyUserState], search: Search,
              settings: Settings) -> tuple[list[str], list[float]]:
    """K nearest users by cosine, the user excluded, only users with samples in the window."""
    state = users.get(user.encode())
    if state is None or state.count == 0:
        return [], []
    vector = [t / state.count for t in state.total]
    since = window_start_ts(day, settings.match_window_days)
    found = await search(vector, settings.k_neighbours, exclude_user=user, min_last_ts=since)
    return [n.user for n in found], [round(float(n.score), 6) for n in found]


def scatter(request: MatchRequest, neighbours: list[str], settings: Settings, partitions: int,
            plan: Plan) -> None:
    """One query per partition owning some of the neighbours; none: an empty answer straight to gather."""
    if not neighbours:
        empty = NeighbourSamples(request.request_id, request.device, request.user, request.day, 1, [])
        plan.send("gather", request.device, empty)
        return
    rank = {n: i for i, n in enumerate(neighbours)}
    groups = group_by_partition(neighbours, lambda n: partition_for(n, partitions))
    want = per_neighbour_ask(request.capacity, len(neighbours))
    since = window_start_ts(request.day, settings.match_window_days)
    for part, (partition, group) in enumerate(sorted(groups.items())):
        query = NeighbourQuery(request.request_id, request.device, request.user, request.day, since,
                               want, group, len(groups), part, [rank[n] for n in group])
        plan.send("neighbour-queries", group[0], query, partition=partition)


def register(ctx: CloudContext, users: KeyedState[AnyUserState]) -> None:
    matches = EventTableState[MatchCache](ctx.table("matches"))
    partitions = ctx.topics["neighbour-queries"].partitions

    async def search(*args: object, **kwargs: object) -> Sequence[Neighbour]:
        return await ctx.index_call(ctx.index.search, *args, **kwargs)  # type: ignore[no-any-return]

    async def user_knn(user: str, day: int) -> tuple[list[str], list[float]]:
        return await knn(user, day, users, search, ctx.settings)

    @ctx.app.agent(ctx.topic("match-requests"), name="match")
    async def match(stream: faust.StreamT) -> None:
        async for event in stream.events():
            request = await ctx.accept("match", event, "match-requests")
            if isinstance(request, MatchRequest):
                plan = await on_request(request, event.message.partition, matches, user_knn, ctx.settings,
                                        partitions)
                await perform(ctx, "match", plan)
                ctx.stage("match").processed += 1
