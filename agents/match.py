"""Match agent: KNN over the vector index, cached per event-time day, scatter to neighbours' partitions."""

from __future__ import annotations

import faust

from agents.context import CloudContext, partition_for
from core.matching import group_by_partition, per_neighbour_ask, window_start_ts
from streams.schemas import MatchCache, MatchRequest, MatchResult, NeighbourQuery, NeighbourSamples


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


def register(ctx: CloudContext, users: faust.Table) -> None:
    matches = ctx.table("matches")
    s = ctx.settings
    partitions = ctx.topics["neighbour-queries"].partitions

    @ctx.app.agent(ctx.topic("match-requests"), name="match")
    async def match(stream: faust.StreamT) -> None:
        async for event in stream.events():
            request = await ctx.accept("match", event, "match-requests")
            if isinstance(request, MatchRequest):
                neighbours = await _neighbours(request)
                if request.capacity > 0:
                    await _scatter(request, neighbours)
                ctx.stage("match").processed += 1

    async def _neighbours(request: MatchRequest) -> list[str]:
        key = request.user.encode()
        cache = matches.get(key)
        hit = cached(cache, request.day) if request.reason != "rematch" else None
        if hit is not None:
            ctx.stage("match").extra["cache_hits"] += 1
            return hit
        neighbours, scores = await knn(request.user, request.day)
        asof = request.day - 1 if request.reason == "rematch" else request.day
        # output before state: a cached match is always on the matches topic (the audit trail)
        await ctx.send("matches", request.user,
                       MatchResult(request.user, request.day, neighbours, scores, asof))
        matches[key] = remember(cache, request.day, neighbours, s.match_window_days)
        return neighbours

    async def knn(user: str, day: int) -> tuple[list[str], list[float]]:
        """K nearest users by cosine, the user excluded, only users with samples in the window."""
        state = users.get(user.encode())
        if state is None or state.count == 0:
            return [], []
        vector = [t / state.count for t in state.total]
        since = window_start_ts(day, s.match_window_days)
        found = await ctx.index_call(ctx.index.search, vector, s.k_neighbours, exclude_user=user,
                                     min_last_ts=since)
        return [n.user for n in found], [round(float(n.score), 6) for n in found]

    async def _scatter(request: MatchRequest, neighbours: list[str]) -> None:
        if not neighbours:
            empty = NeighbourSamples(request.request_id, request.device, request.user, request.day, 1, [])
            await ctx.send("gather", request.device, empty)
            return
        rank = {n: i for i, n in enumerate(neighbours)}
        groups = group_by_partition(neighbours, lambda n: partition_for(n, partitions))
        want = per_neighbour_ask(request.capacity, len(neighbours))
        since = window_start_ts(request.day, s.match_window_days)
        for part, (partition, group) in enumerate(sorted(groups.items())):
            query = NeighbourQuery(request.request_id, request.device, request.user, request.day, since,
                                   want, group, len(groups), part, [rank[n] for n in group])
            await ctx.send("neighbour-queries", group[0], query, partition=partition)
