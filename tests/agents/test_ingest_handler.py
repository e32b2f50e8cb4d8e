"""The ingest agent's handlers over a dict: validation, samples out, redelivery, pulls, no broker."""

from __future__ import annotations

from types import SimpleNamespace

import msgpack
from handlerkit import DAY0, SETTINGS, to

from agents import ingest
from agents.context import CloudContext
from agents.plan import Write, collect
from agents.state import DictState
from core.privacy import device_pseudonym, user_pseudonym
from core.sample import DAY
from streams.deadletter import DeadLetters
from streams.schemas import (
    BehaviourEvent,
    DeadLetter,
    DevicePull,
    HistoryState,
    PullRequest,
    SampleBatch,
    UpEnvelope,
    decode,
)
from streams.topics import load_topics

KEY = SETTINGS.pseudonym_key


def _envelope(device: str, users: list[str], n: int, start: int = 0) -> UpEnvelope:
    events = [BehaviourEvent(u, DAY0 * DAY + 60 * i, f"item-{i}", [f"t{i % 3}"], "click" if i % 2 else "view")
              for u in users for i in range(start, start + n)]
    return UpEnvelope(device, events)


async def test_an_invalid_envelope_is_dead_lettered_with_its_reason() -> None:
    letters: list[bytes] = []

    async def send(key: bytes, value: bytes) -> None:
        letters.append(value)

    ctx = CloudContext(SETTINGS, load_topics(), app=None)  # type: ignore[arg-type]
    ctx.letters = DeadLetters(send, stage="cloud")
    raw = msgpack.packb({"k": "up.events", "v": 1, "device_id": "d", "events": [
        {"user_id": "u", "ts": "late", "item_id": "i", "item_tags": [], "action": "click"}]})
    event = SimpleNamespace(value=raw, message=SimpleNamespace(topic="up", partition=5, offset=42))
    assert await ctx.accept("ingest", event, "up") is None  # type: ignore[arg-type]
    counters = ctx.stage("ingest")
    assert (counters.received, counters.dead, counters.processed) == (1, 1, 0)
    letter = decode(letters[0])
    assert isinstance(letter, DeadLetter)
    assert (letter.reason, letter.partition, letter.offset, letter.raw) == ("wrong_type", 5, 42, raw)
    assert "events[0].ts" in letter.detail and letter.detail.startswith("[ingest]")


async def test_samples_go_out_per_user_before_the_history_is_written_on_the_envelopes_partition() -> None:
    histories: DictState[HistoryState] = DictState()
    plan = ingest.handle([(3, _envelope("dev", ["alice", "bob"], 6))], histories, SETTINGS)
    assert [type(step).__name__ for step in plan.steps] == ["Send", "Send", "Write", "Write"]
    alice, bob = user_pseudonym(KEY, "alice"), user_pseudonym(KEY, "bob")
    sent = await collect(plan)
    assert [s.key for s in to("samples", sent)] == [alice, bob]
    batch = sent[0].record
    assert isinstance(batch, SampleBatch) and batch.device == device_pseudonym(KEY, "dev")
    assert [x.ts for x in batch.to_samples()] == [DAY0 * DAY + 60 * i for i in (1, 3, 5)]  # clicks only
    assert [(p, k) for p, k, _ in histories.writes] == [(3, alice.encode()), (3, bob.encode())]
    assert plan.counts["samples"] == 6


async def test_a_redelivered_envelope_sends_no_samples_and_keeps_the_history() -> None:
    histories: DictState[HistoryState] = DictState()
    envelope = _envelope("dev", ["alice"], 6)
    await collect(ingest.handle([(1, envelope)], histories, SETTINGS))
    before = dict(histories.data)
    again = ingest.handle([(1, envelope)], histories, SETTINGS)
    assert to("samples", await collect(again)) == []
    assert histories.data == before and again.counts["samples"] == 0


async def test_a_user_in_several_envelopes_is_read_once_and_written_once_on_the_last_partition() -> None:
    histories: DictState[HistoryState] = DictState()
    run = [(1, _envelope("d1", ["alice"], 4)), (6, _envelope("d1", ["alice"], 4, start=4)),
           (2, _envelope("d2", ["alice"], 4, start=8))]
    plan = ingest.handle(run, histories, SETTINGS)
    sent = await collect(plan)
    # consecutive samples of one device share a batch; a device change starts a new one
    devices = [s.record.device for s in to("samples", sent)]  # type: ignore[attr-defined]
    assert devices == [device_pseudonym(KEY, "d1"), device_pseudonym(KEY, "d2")]
    assert [w.partition for w in plan.steps if isinstance(w, Write)] == [2]
    one_go = ingest.handle([(0, UpEnvelope("d", [e for _, env in run for e in env.events]))], DictState(), SETTINGS)
    assert [w.value for w in one_go.writes] == [w.value for w in plan.writes]


async def test_a_pull_is_desensitized_to_the_devices_gather_partition() -> None:
    pull = PullRequest("dev", "alice", DAY0 * DAY + 3600, "req-1", max_batches=5)
    sent = await collect(ingest.on_pull(pull, SETTINGS))
    device = device_pseudonym(KEY, "dev")
    assert [(s.topic, s.key, s.partition) for s in sent] == [("gather", device, None)]
    assert sent[0].record == DevicePull("req-1", device, user_pseudonym(KEY, "alice"), DAY0, 5)
