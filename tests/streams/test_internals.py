"""The private Faust/aiokafka internals in streams/internals.py: present on the installed versions, and loud when not."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition
from aiokafka.consumer.group_coordinator import GroupCoordinator

from streams import internals
from streams.internals import InternalChanged


async def test_every_internal_is_where_this_project_expects_it() -> None:
    assert await internals.check() == []


async def test_a_vanished_internal_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(GroupCoordinator, "fetch_committed_offsets")
    assert await internals.check() == ["GroupCoordinator.fetch_committed_offsets is not a coroutine function"]


def test_fetch_positions_reads_an_assignment_and_refuses_a_changed_shape() -> None:
    tp, other = TopicPartition("up", 0), TopicPartition("up", 1)
    states = {tp: SimpleNamespace(position=7, has_valid_position=True),
              other: SimpleNamespace(position=None, has_valid_position=False)}
    assignment = SimpleNamespace(tps={tp, other}, state_value=states.get)
    consumer = SimpleNamespace(_subscription=SimpleNamespace(subscription=SimpleNamespace(assignment=assignment)))
    assert internals.fetch_positions(consumer) == {tp: 7}  # type: ignore[arg-type]
    assert internals.fetch_positions(None) == {}  # not started yet
    unassigned = SimpleNamespace(_subscription=SimpleNamespace(subscription=None))
    assert internals.fetch_positions(unassigned) == {}  # type: ignore[arg-type]
    # an upgrade that renames the subscription state must not turn the skipped-records guard off quietly
    with pytest.raises(InternalChanged, match="_subscription"):
        internals.fetch_positions(SimpleNamespace(_subscriptions=None))  # type: ignore[arg-type]
