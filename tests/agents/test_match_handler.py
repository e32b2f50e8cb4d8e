"""The match handler over a dict: KNN cached per day, re-match, scatter to the neighbours' partitions."""

from __future__ import annotations

from handlerkit import DAY0, SETTINGS

from agents import match
from agents.context import partition_for
from agents.plan import Send, Write, collect
from agents.state import DictState
from core.matching import per_neighbour_ask, window_start_ts
from streams.schemas import MatchCache, MatchRequest, MatchResult, NeighbourQuery, NeighbourSamples

NEIGHBOURS = [f"n{i}" for i in range(12)]


class FakeKnn:
    def __init__(self, neighbours: list[str]) -> None:
        self.neighbours = neighbours
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, user: str, day: int) -> tuple[list[str], list[float]]:
        self.calls.append((user, day))
        return list(self.neighbours), [1.0 - i / 100 for i in range(len(self.neighbours))]


def _request(day: int = DAY0, capacity: int = 300, reason: str = "pull") -> MatchRequest:
    return MatchRequest(f"req-{day}-{reason}", "me", "dev", day, capacity, reason)


async def test_a_match_is_published_before_it_is_cached_and_reused_that_day() -> None:
    matches: DictState[MatchCache] = DictState()
    knn = FakeKnn(NEIGHBOURS)
    plan = await match.on_request(_request(capacity=0), 5, matches, knn, SETTINGS, 8)
    assert [type(step) for step in plan.steps] == [Send, Write]
    sent = await collect(plan)
    assert sent[0].record == MatchResult("me", DAY0, NEIGHBOURS, [1.0 - i / 100 for i in range(12)], DAY0)
    assert matches.writes[0][:2] == (5, b"me")
    again = await match.on_request(_request(capacity=0), 5, matches, knn, SETTINGS, 8)
    assert again.steps == [] and again.counts["cache_hits"] == 1 and len(knn.calls) == 1
    await collect(await match.on_request(_request(DAY0 + 1, capacity=0), 5, matches, knn, SETTINGS, 8))
    assert len(knn.calls) == 2  # a new day searches again
    assert matches.get(b"me") == MatchCache([DAY0, DAY0 + 1], [NEIGHBOURS, NEIGHBOURS])


async def test_a_rematch_always_searches_and_records_the_day_before_as_its_data() -> None:
    matches: DictState[MatchCache] = DictState()
    knn = FakeKnn(NEIGHBOURS)
    await collect(await match.on_request(_request(), 0, matches, knn, SETTINGS, 8))
    plan = await match.on_request(_request(reason="rematch", capacity=0), 0, matches, knn, SETTINGS, 8)
    result = plan.sends[0].record
    assert len(knn.calls) == 2 and isinstance(result, MatchResult) and result.asof_day == DAY0 - 1


def test_the_cache_keeps_the_match_window_only() -> None:
    cache = None
    for day in range(DAY0, DAY0 + 10):
        cache = match.remember(cache, day, [f"n{day}"], 7)
    assert cache is not None and cache.days == list(range(DAY0 + 3, DAY0 + 10))
    assert match.cached(cache, DAY0 + 2) is None and match.cached(cache, DAY0 + 9) == [f"n{DAY0 + 9}"]


async def test_the_request_scatters_one_query_per_partition_owning_neighbours() -> None:
    matches: DictState[MatchCache] = DictState()
    plan = await match.on_request(_request(), 0, matches, FakeKnn(NEIGHBOURS), SETTINGS, 8)
    queries = [s for s in plan.sends if s.topic == "neighbour-queries"]
    groups: dict[int, list[str]] = {}
    for n in NEIGHBOURS:
        groups.setdefault(partition_for(n, 8), []).append(n)
    assert [q.partition for q in queries] == sorted(groups)
    for part, send in enumerate(queries):
        query = send.record
        assert isinstance(query, NeighbourQuery) and send.partition is not None
        assert query.neighbours == groups[send.partition] and send.key == query.neighbours[0]
        assert (query.part, query.parts) == (part, len(groups))
        assert query.ranks == [NEIGHBOURS.index(n) for n in query.neighbours]
        assert query.want == per_neighbour_ask(300, 12)
        assert query.since_ts == window_start_ts(DAY0, SETTINGS.match_window_days)


async def test_no_neighbours_answers_the_device_at_once_and_no_capacity_scatters_nothing() -> None:
    plan = await match.on_request(_request(), 0, DictState(), FakeKnn([]), SETTINGS, 8)
    gather = [s for s in plan.sends if s.topic == "gather"]
    assert [s.key for s in gather] == ["dev"]
    assert gather[0].record == NeighbourSamples("req-19700-pull", "dev", "me", DAY0, 1, [])
    plan = await match.on_request(_request(capacity=0), 0, DictState(), FakeKnn(NEIGHBOURS), SETTINGS, 8)
    assert [s.topic for s in plan.sends] == ["matches"]


async def test_knn_searches_with_the_users_mean_and_skips_users_without_samples() -> None:
    from agents.index import Neighbour
    from streams.schemas import UserState

    calls: list[tuple[object, ...]] = []

    async def search(vector: list[float], k: int, exclude_user: str, min_last_ts: int) -> list[Neighbour]:
        calls.append((vector, k, exclude_user, min_last_ts))
        return [Neighbour("n1", 0.12345678), Neighbour("n2", 0.1)]

    users: DictState[UserState] = DictState({b"me": UserState(2, [1.0, 3.0], DAY0 * 86400, [], [])})
    assert await match.knn("nobody", DAY0, users, search, SETTINGS) == ([], [])
    assert await match.knn("me", DAY0, users, search, SETTINGS) == (["n1", "n2"], [0.123457, 0.1])
    assert calls == [([0.5, 1.5], SETTINGS.k_neighbours, "me", window_start_ts(DAY0, SETTINGS.match_window_days))]
