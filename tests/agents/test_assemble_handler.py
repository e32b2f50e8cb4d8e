"""The assemble handlers over a dict: pulls, the daily quota, gathering parts, dedup, batches, notices."""

from __future__ import annotations

from handlerkit import DAY0, SETTINGS, samples_of, to

from agents import assemble
from agents.assemble import AssembleState, part_key, sent_key
from agents.plan import Send, Write, collect
from agents.state import DictState
from core.batching import chunk
from core.sample import Sample
from streams import schemas as wire

PER_DAY = SETTINGS.batches_per_day  # 12


def _pull(request: str = "r1", day: int = DAY0, max_batches: int = 12) -> wire.DevicePull:
    return wire.DevicePull(request, "dev", "me", day, max_batches)


def _answer(request: str, part: int, parts: int, owners: dict[str, list[Sample]],
            ranks: dict[str, int]) -> wire.NeighbourSamples:
    """One partition's answer: each owner's samples newest first, as the neighbour side sends them."""
    records = [wire.SampleRecord.of(x) for samples in owners.values() for x in reversed(samples)]
    return wire.NeighbourSamples(request, "dev", "me", DAY0, parts, records, part, list(owners),
                            [ranks[n] for n in owners])


def _delivered(sent: list[Send]) -> list[list[str]]:
    return [[x.sample_id for x in wire.unpack_samples(s.record.payload)]  # type: ignore[attr-defined]
            for s in to("down", sent) if isinstance(s.record, wire.DownBatch)]


def _tables(*devices: tuple[bytes, wire.DeviceState]) -> AssembleState:
    return AssembleState(DictState(dict(devices)), DictState(), DictState())


def _device(tables: AssembleState) -> wire.DeviceState:
    state = tables.devices.get(b"dev")
    assert state is not None
    return state


def _sent_ids(tables: AssembleState) -> set[str]:
    return {i for day in _device(tables).sent_days for i in tables.sent.get(sent_key("dev", day)).ids}  # type: ignore[union-attr]


async def _pending(tables: AssembleState, request: str = "r1", max_batches: int = 12) -> None:
    await collect(assemble.on_pull(_pull(request, max_batches=max_batches), 3, tables, SETTINGS))


async def test_a_pull_asks_for_a_match_before_it_is_remembered_and_a_redelivered_pull_is_a_no_op() -> None:
    tables = _tables()
    plan = assemble.on_pull(_pull(max_batches=4), 3, tables, SETTINGS)
    assert [type(step) for step in plan.steps] == [Send, Write]
    sent = await collect(plan)
    assert sent[0].record == wire.MatchRequest("r1", "me", "dev", DAY0, 4 * SETTINGS.batch_size)
    assert (sent[0].topic, sent[0].key) == ("match-requests", "me")
    assert [p.request_id for p in _device(tables).pending] == ["r1"] and tables.devices.writes[0][0] == 3  # type: ignore[attr-defined]
    again = assemble.on_pull(_pull(max_batches=4), 3, tables, SETTINGS)
    assert again.steps == [] and again.counts["duplicate_pulls"] == 1


async def test_a_pull_over_the_days_quota_gets_a_quota_notice_and_the_next_day_starts_afresh() -> None:
    tables = _tables((b"dev", wire.DeviceState("me", DAY0, PER_DAY)))
    plan = assemble.on_pull(_pull(), 0, tables, SETTINGS)
    sent = await collect(plan)
    assert [s.record for s in sent] == [wire.DownNotice("dev", "r1", DAY0, "quota", PER_DAY)]
    assert plan.counts["notice_quota"] == 1 and tables.devices.writes == []  # type: ignore[attr-defined]
    tomorrow = await collect(assemble.on_pull(_pull("r2", DAY0 + 1), 0, tables, SETTINGS))
    assert tomorrow[0].record == wire.MatchRequest("r2", "me", "dev", DAY0 + 1, PER_DAY * SETTINGS.batch_size)


async def test_parts_are_gathered_and_merged_in_knn_rank_order_whatever_order_they_came_in() -> None:
    owners = {name: samples_of(name, 3) for name in ("a", "b", "c")}
    ranks = {"a": 0, "b": 1, "c": 2}
    results = []
    for order in ([0, 1], [1, 0]):
        tables = _tables()
        await _pending(tables)
        answers = [_answer("r1", 0, 2, {"b": owners["b"]}, ranks),
                   _answer("r1", 1, 2, {"c": owners["c"], "a": owners["a"]}, ranks)]
        first = assemble.on_answer(answers[order[0]], 3, tables, SETTINGS)
        # waiting for the other part: this one is stored under its own key, the device's record untouched
        assert first.sends == [] and [(w.state, w.key) for w in first.writes] == [
            (tables.parts, part_key("dev", "r1", order[0]))]
        await collect(first)
        results.append(await collect(assemble.on_answer(answers[order[1]], 3, tables, SETTINGS)))
        assert tables.parts.items() == []  # delivered: the stored part is gone
    assert _delivered(results[0]) == _delivered(results[1])
    newest_first = [owners[n][i].sample_id for i in (2, 1, 0) for n in ("a", "b", "c")]
    assert _delivered(results[0]) == [newest_first]


async def test_an_answer_for_an_unknown_request_or_a_part_already_in_is_stale() -> None:
    tables = _tables()
    owners = {"a": samples_of("a", 2)}
    assert assemble.on_answer(_answer("r1", 0, 2, owners, {"a": 0}), 0, tables, SETTINGS).counts["stale_answers"]
    await _pending(tables)
    await collect(assemble.on_answer(_answer("r1", 0, 2, owners, {"a": 0}), 0, tables, SETTINGS))
    plan = assemble.on_answer(_answer("r1", 0, 2, owners, {"a": 0}), 0, tables, SETTINGS)
    assert plan.steps == [] and plan.counts["stale_answers"] == 1


async def test_batches_follow_chunking_skip_samples_sent_before_and_are_audited() -> None:
    owner = samples_of("a", 70)
    already = [x.sample_id for x in owner[-5:]]  # the newest five went to this device earlier
    tables = _tables((b"dev", wire.DeviceState("me", DAY0, 0, sent_days=[DAY0])))
    tables.sent.data[sent_key("dev", DAY0)] = wire.IdList(already, [x.ts for x in owner[-5:]])  # type: ignore[attr-defined]
    await _pending(tables)
    plan = assemble.on_answer(_answer("r1", 0, 1, {"a": owner}, {"a": 0}), 3, tables, SETTINGS)
    sent = await collect(plan)
    batches = _delivered(sent)
    expected = [x.sample_id for x in reversed(owner[:-5])]
    assert [len(b) for b in batches] == [len(c) for c in chunk(expected, 25, 40)] == [33, 32]
    assert [i for b in batches for i in b] == expected
    down = [s.record for s in to("down", sent)]
    assert [(d.batch_id, d.of) for d in down] == [("r1-0", 2), ("r1-1", 2)]  # type: ignore[attr-defined]
    audit = [s.record for s in to("batch-log", sent)]
    assert all(isinstance(a, wire.BatchRecord) and a.user == "me" for a in audit)
    assert [s.topic for s in sent] == ["down", "batch-log", "down", "batch-log"]  # no notice: quota left
    state = _device(tables)
    assert state.used == 2 and state.pending == [] and state.done == ["r1"] and state.sent_days == [DAY0]
    assert _sent_ids(tables) == {x.sample_id for x in owner}
    assert plan.counts["batches"] == 2


async def test_sent_ids_of_earlier_days_are_honoured_in_the_window_and_dropped_after_it() -> None:
    owner = samples_of("a", 10, DAY0 - 3) + samples_of("a", 10)
    tables = _tables()
    await _pending(tables, "r1")
    await collect(assemble.on_answer(_answer("r1", 0, 1, {"a": owner[:10]}, {"a": 0}), 0, tables, SETTINGS))
    assert _device(tables).sent_days == [DAY0]
    # the next day, the same neighbour's samples again: only the new ones go down
    await collect(assemble.on_pull(_pull("r2", DAY0 + 1), 0, tables, SETTINGS))
    sent = await collect(assemble.on_answer(
        wire.NeighbourSamples("r2", "dev", "me", DAY0 + 1, 1, [wire.SampleRecord.of(x) for x in reversed(owner)],
                              0, ["a"], [0]), 0, tables, SETTINGS))
    assert [i for b in _delivered(sent) for i in b] == [x.sample_id for x in reversed(owner[10:])]
    assert _device(tables).sent_days == [DAY0, DAY0 + 1]
    # a week later nothing of DAY0 is in the window: its key is dropped
    far = DAY0 + 1 + SETTINGS.match_window_days
    await collect(assemble.on_pull(_pull("r3", far), 0, tables, SETTINGS))
    late = samples_of("a", 3, far)
    await collect(assemble.on_answer(
        wire.NeighbourSamples("r3", "dev", "me", far, 1, [wire.SampleRecord.of(x) for x in reversed(late)],
                              0, ["a"], [0]), 0, tables, SETTINGS))
    assert _device(tables).sent_days == [far]
    assert [k for k, _ in tables.sent.items()] == [sent_key("dev", far)]


async def test_state_written_before_the_split_still_counts_its_sent_ids_and_answered_parts() -> None:
    owner = samples_of("a", 6) + samples_of("b", 6)
    old_part = wire.PendingGather("r1", DAY0, 2, [0], ["a"], [wire.SampleRecord.of(x) for x in reversed(owner[:6])], [0])
    tables = _tables((b"dev", wire.DeviceState("me", DAY0, 0, [owner[5].sample_id], [owner[5].ts], [old_part])))
    sent = await collect(assemble.on_answer(_answer("r1", 1, 2, {"b": owner[6:]}, {"b": 1}), 0, tables, SETTINGS))
    expected = [x.sample_id for i in range(5, -1, -1) for x in (owner[i], owner[6 + i]) if x is not owner[5]]
    assert [i for b in _delivered(sent) for i in b] == expected
    state = _device(tables)
    assert state.sent_ids == [] and state.pending == [] and _sent_ids(tables) == {x.sample_id for x in owner}


async def test_the_twelfth_batch_of_the_day_ends_with_a_quota_notice_and_nothing_new_with_exhausted() -> None:
    tables = _tables((b"dev", wire.DeviceState("me", DAY0, PER_DAY - 2)))
    await _pending(tables)
    owner = samples_of("a", 200)
    sent = await collect(assemble.on_answer(_answer("r1", 0, 1, {"a": owner}, {"a": 0}), 0, tables, SETTINGS))
    assert len(_delivered(sent)) == 2 and all(len(b) <= SETTINGS.batch_max for b in _delivered(sent))
    assert sent[-1].record == wire.DownNotice("dev", "r1", DAY0, "quota", PER_DAY)
    assert _device(tables).used == PER_DAY

    tables = _tables((b"dev", wire.DeviceState("me", DAY0, 0, sent_days=[DAY0])))
    tables.sent.data[sent_key("dev", DAY0)] = wire.IdList([x.sample_id for x in owner], [x.ts for x in owner])  # type: ignore[attr-defined]
    await _pending(tables, "r2")
    plan = assemble.on_answer(_answer("r2", 0, 1, {"a": owner}, {"a": 0}), 0, tables, SETTINGS)
    sent = await collect(plan)
    assert [s.record for s in sent] == [wire.DownNotice("dev", "r2", DAY0, "exhausted", 0)]
    assert plan.counts["notice_exhausted"] == 1 and plan.counts["batches"] == 0
    assert _device(tables).done == ["r2"]  # answered: a redelivered pull is a no-op
