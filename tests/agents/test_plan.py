"""Plans and state adapters: steps carried out in order, counters as the agents kept them, with_()."""

from __future__ import annotations

from dataclasses import dataclass

from handlerkit import SETTINGS

from agents.context import CloudContext
from agents.plan import Plan, collect, perform
from agents.state import DictState, EventTableState, with_
from streams.schemas import DayEnd, DeviceState, IdList
from streams.topics import load_topics


async def test_steps_happen_in_plan_order_and_a_zero_count_still_names_its_counter() -> None:
    ctx = CloudContext(SETTINGS, load_topics(), app=None)  # type: ignore[arg-type]
    state: DictState[IdList] = DictState()
    log: list[str] = []

    async def send(name: str, key: str, record: object, partition: int | None = None) -> None:
        log.append(f"send {name} {key} {partition} writes={len(state.writes)}")

    ctx.send = send  # type: ignore[method-assign]
    plan = Plan()
    plan.send("a", "k", DayEnd(1))
    plan.put(state, 4, b"x", IdList(["i"]))
    plan.send("b", "k", DayEnd(2), partition=7)
    plan.drop(state, 4, b"x")
    plan.count("things", 0)
    plan.count("other")
    await perform(ctx, "stage", plan)
    assert log == ["send a k None writes=0", "send b k 7 writes=1"]
    assert state.writes == [(4, b"x", IdList(["i"])), (4, b"x", None)] and state.data == {}
    assert dict(ctx.stage("stage").extra) == {"things": 0, "other": 1}


async def test_collect_applies_writes_and_returns_sends() -> None:
    state: DictState[IdList] = DictState()
    plan = Plan()
    plan.put(state, 0, b"k", IdList())
    plan.send("t", "k", DayEnd(3))
    assert [s.record for s in await collect(plan)] == [DayEnd(3)] and state.get(b"k") == IdList()


async def test_the_event_table_adapter_writes_the_table_as_faust_code_did() -> None:
    table: dict[bytes, IdList] = {}
    adapter = EventTableState[IdList](table)  # type: ignore[arg-type]
    await adapter.put(3, b"k", IdList(["i"]))
    assert table == {b"k": IdList(["i"])} and adapter.get(b"k") == IdList(["i"])
    await adapter.drop(3, b"k")
    await adapter.drop(3, b"missing")
    assert table == {}


def test_with_changes_msgspec_records_and_dataclasses_alike() -> None:
    state = DeviceState("me", 5, 2, ["a"], [1], [], ["r0"])
    changed = with_(state, used=3, done=["r0", "r1"])
    assert changed == DeviceState("me", 5, 3, ["a"], [1], [], ["r0", "r1"]) and state.used == 2

    @dataclass(frozen=True)
    class Point:
        x: int
        y: int

    assert with_(Point(1, 2), y=5) == Point(1, 5)
