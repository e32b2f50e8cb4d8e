"""The user-vector and neighbour-samples handlers over dicts: fold, publish, redelivery, rematch, answers."""

from __future__ import annotations

from handlerkit import DAY0, SETTINGS, samples_of, to

from agents import neighbours, vectors
from agents.context import partition_for
from agents.plan import Write, collect
from agents.state import DictState
from core.features import user_feature
from core.sample import DAY
from core.vectors import mean_vector
from streams.schemas import (
    IdList,
    MatchRequest,
    NeighbourQuery,
    NeighbourSamples,
    RecentSamples,
    SampleBatch,
    UserState,
    UserVector,
)


def _states() -> tuple[DictState[UserState], DictState[RecentSamples]]:
    return DictState(), DictState()


async def test_a_users_batches_fold_into_one_vector_then_one_state_write() -> None:
    users, recent = _states()
    first, second = samples_of("u1", 3), samples_of("u1", 2, start=3)
    run = [(4, SampleBatch.of("u1", "d1", first)), (4, SampleBatch.of("u1", "d1", second))]
    plan = vectors.fold_users(run, users, recent, SETTINGS)
    assert [type(step).__name__ for step in plan.steps] == ["Send", "Write", "Write"]  # output before state
    sent = await collect(plan)
    vector = sent[0].record
    assert isinstance(vector, UserVector) and (sent[0].topic, sent[0].key) == ("user-vectors", "u1")
    expected = mean_vector([user_feature(x, SETTINGS.features) for x in first + second])
    assert vector.count == 5 and max(abs(a - b) for a, b in zip(vector.vector, expected, strict=True)) < 1e-12
    state = users.get(b"u1")
    assert state is not None and state.device == "d1" and state.count == 5
    day = recent.get(vectors.recent_key("u1", DAY0))
    assert day is not None and day.samples.to_samples("u1") == first + second
    assert {p for p, _, _ in users.writes + recent.writes} == {4}
    assert plan.counts["duplicate_samples"] == 0


async def test_a_redelivered_batch_changes_no_state_and_publishes_the_same_vector() -> None:
    users, recent = _states()
    run = [(2, SampleBatch.of("u1", "d1", samples_of("u1", 4)))]
    first = await collect(vectors.fold_users(run, users, recent, SETTINGS))
    state, days = dict(users.data), dict(recent.data)
    again = vectors.fold_users(run, users, recent, SETTINGS)
    assert await collect(again) == first
    assert users.data == state and recent.data == days and again.counts["duplicate_samples"] == 4


async def test_days_that_leave_the_window_are_dropped() -> None:
    users, recent = _states()
    await collect(vectors.fold_users([(0, SampleBatch.of("u1", "d", samples_of("u1", 2)))], users, recent,
                                     SETTINGS))
    later = DAY0 + SETTINGS.match_window_days
    plan = vectors.fold_users([(0, SampleBatch.of("u1", "d", samples_of("u1", 1, day=later)))], users, recent,
                              SETTINGS)
    await collect(plan)
    assert recent.get(vectors.recent_key("u1", DAY0)) is None
    assert (0, vectors.recent_key("u1", DAY0), None) in recent.writes


async def test_end_of_day_rematches_the_partitions_users_active_that_day_in_name_order() -> None:
    users, recent = _states()
    names = [f"user-{i}" for i in range(20)]
    for name in names:
        await collect(vectors.fold_users([(0, SampleBatch.of(name, f"dev-{name}", samples_of(name, 1)))], users,
                                         recent, SETTINGS))
    partition = partition_for(names[0], 8)
    mine = sorted(n for n in names if partition_for(n, 8) == partition)
    plan = vectors.rematch_active(partition, DAY0, users, 8)
    sent = await collect(plan)
    assert [s.key for s in to("match-requests", sent)] == mine
    assert sent[0].record == MatchRequest(f"rematch-{DAY0}-{mine[0]}", mine[0], f"dev-{mine[0]}", DAY0 + 1, 0,
                                          "rematch")
    assert plan.counts["rematch_requests"] == len(mine)
    assert vectors.rematch_active(partition, DAY0 - 1, users, 8).counts["rematch_requests"] == 0


async def _neighbour_states(owners: dict[str, int]) -> tuple[DictState[UserState], DictState[RecentSamples]]:
    users, recent = _states()
    for name, n in owners.items():
        await collect(vectors.fold_users([(0, SampleBatch.of(name, "d", samples_of(name, n)))], users, recent,
                                         SETTINGS))
    return users, recent


def _query(request: str, want: int, names: list[str]) -> NeighbourQuery:
    return NeighbourQuery(request, "dev", "me", DAY0, DAY0 * DAY - 6 * DAY, want, names, 1, 0,
                          list(range(len(names))))


async def test_a_neighbour_query_takes_the_newest_unserved_samples_and_marks_them_before_answering() -> None:
    users, recent = await _neighbour_states({"n1": 5, "n2": 3})
    served: DictState[IdList] = DictState()
    plan = neighbours.answer(_query("r1", 2, ["n1", "n2", "missing"]), 6, users, recent, served, SETTINGS)
    assert [type(step) for step in plan.steps][-1].__name__ == "Send"
    assert all(isinstance(step, Write) for step in plan.steps[:-1])  # served sets first, as before
    sent = await collect(plan)
    answer = sent[0].record
    assert isinstance(answer, NeighbourSamples) and (sent[0].topic, sent[0].key) == ("gather", "dev")
    newest = [x.sample_id for x in samples_of("n1", 5)[-2:][::-1] + samples_of("n2", 3)[-2:][::-1]]
    assert [r.sample_id for r in answer.samples] == newest
    assert [(p, k) for p, k, _ in served.writes] == [(6, b"dev|n1"), (6, b"dev|n2")]
    # the next request gets the next ones
    nxt = await collect(neighbours.answer(_query("r2", 2, ["n1"]), 6, users, recent, served, SETTINGS))
    assert [r.sample_id for r in nxt[0].record.samples] == [x.sample_id for x in samples_of("n1", 3)[::-1][:2]]  # type: ignore[attr-defined]


async def test_a_redelivered_neighbour_query_gets_the_same_answer_and_writes_nothing() -> None:
    users, recent = await _neighbour_states({"n1": 5})
    served: DictState[IdList] = DictState()
    query = _query("r1", 3, ["n1"])
    first = await collect(neighbours.answer(query, 0, users, recent, served, SETTINGS))
    writes = len(served.writes)
    plan = neighbours.answer(query, 0, users, recent, served, SETTINGS)
    assert await collect(plan) == first
    assert len(served.writes) == writes and plan.counts["redelivered_queries"] == 1
