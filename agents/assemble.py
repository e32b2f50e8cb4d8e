"""Assemble agent, on the device's partition: dedup, chunk, daily quota, compress, down-tunnel.

State is split so that no write re-encodes what an earlier one already stored: the device's
small record (quota, open requests, answered ids), each answered part of an open request under
its own key until the request is delivered, and the ids sent to the device one key per day.
When the samples and the sent ids lived inside the device's record, every part's answer
rewrote all of them: two thirds of a worker's changelog bytes on the drift scenario.
"""

from __future__ import annotations

from dataclasses import dataclass

import faust

from agents.context import CloudContext
from agents.plan import Plan, perform
from agents.state import EventTableState, KeyedState, with_
from core.batching import DailyQuota, chunk
from core.matching import merge_answers, window_start_ts
from core.sample import DAY, Sample
from streams.schemas import (
    BatchRecord,
    DevicePull,
    DeviceState,
    DownBatch,
    DownNotice,
    IdList,
    MatchRequest,
    NeighbourSamples,
    PendingGather,
    pack_samples,
)
from streams.settings import Settings

DONE_KEEP = 256  # answered request ids remembered per device (12 a day for the 7-day window, and slack)


@dataclass(frozen=True, slots=True)
class AssembleState:
    """The assemble agent's tables."""

    devices: KeyedState[DeviceState]
    parts: KeyedState[NeighbourSamples]  # an answered part of an open request, until it is delivered
    sent: KeyedState[IdList]  # the ids (with ts) sent to a device on one quota day


def part_key(device: str, request_id: str, part: int) -> bytes:
    return f"{device}|{request_id}|{part}".encode()


def sent_key(device: str, day: int) -> bytes:
    return f"{device}|{day}".encode()


def on_pull(pull: DevicePull, partition: int, tables: AssembleState, settings: Settings) -> Plan:
    """A device's pull: a match request for what today's quota still allows, or a "quota" notice."""
    plan = Plan()
    key = pull.device.encode()
    state = tables.devices.get(key) or DeviceState(pull.user)
    if pull.request_id in state.done or any(p.request_id == pull.request_id for p in state.pending):
        plan.count("duplicate_pulls")  # redelivered: answered or being answered
        return plan
    quota = DailyQuota(state.day, state.used).on(pull.day)
    remaining = min(quota.remaining(settings.batches_per_day), pull.max_batches)
    if remaining <= 0:
        notice(plan, pull.device, pull.request_id, pull.day, "quota", quota.used)
        return plan
    pending = PendingGather(pull.request_id, pull.day, 0, [], [], [])
    capacity = remaining * settings.batch_size
    # output before state: a pending request whose match request was lost would wait forever
    plan.send("match-requests", pull.user, MatchRequest(pull.request_id, pull.user, pull.device, pull.day, capacity))
    plan.put(tables.devices, partition, key, with_(state, user=pull.user, day=quota.day, used=quota.used,
                                                   pending=[*state.pending, pending]))
    return plan


def on_answer(answer: NeighbourSamples, partition: int, tables: AssembleState, settings: Settings) -> Plan:
    """One partition's answer: stored under its own key until every part is in, then delivered."""
    plan = Plan()
    state = tables.devices.get(answer.device.encode())
    pending = next((p for p in state.pending if p.request_id == answer.request_id), None) if state else None
    stored = stored_parts(answer, tables) if pending is not None else {}
    if state is None or pending is None or answer.part in stored or answer.part in pending.got:
        plan.count("stale_answers")  # redelivered or unknown request
        return plan
    if len(pending.got) + len(stored) + 1 < answer.parts:
        plan.put(tables.parts, partition, part_key(answer.device, answer.request_id, answer.part), answer)
        return plan
    return deliver(answer.device, state, gathered(pending, [*stored.values(), answer]), partition, tables, settings)


def stored_parts(answer: NeighbourSamples, tables: AssembleState) -> dict[int, NeighbourSamples]:
    """Parts of this request already in, under their own keys (older state holds them in `pending.got`)."""
    keys = {p: part_key(answer.device, answer.request_id, p) for p in range(answer.parts)}
    return {p: part for p, key in keys.items() if (part := tables.parts.get(key)) is not None}


def gathered(pending: PendingGather, answers: list[NeighbourSamples]) -> PendingGather:
    """The request with every part's samples, neighbours and ranks (`pending`'s own: older state)."""
    return with_(pending, parts=answers[-1].parts, got=[*pending.got, *(a.part for a in answers)],
                 neighbours=[*pending.neighbours, *(n for a in answers for n in a.neighbours)],
                 samples=[*pending.samples, *(x for a in answers for x in a.samples)],
                 ranks=[*pending.ranks, *(r for a in answers for r in a.ranks)])


def deliver(device: str, state: DeviceState, pending: PendingGather, partition: int, tables: AssembleState,
            settings: Settings) -> Plan:
    """All parts are in: merge newest-first by neighbour rank, dedup, batch within quota."""
    plan = Plan()
    quota = DailyQuota(state.day, state.used).on(pending.day)
    since = window_start_ts(pending.day, settings.match_window_days)
    sent, days, stale_days = sent_in_window(device, state, tables.sent, since)
    batches = assemble_batches(pending, sent, quota.remaining(settings.batches_per_day), settings)
    for n, batch in enumerate(batches):
        send_batch(plan, device, state.user, pending, f"{pending.request_id}-{n}", batch, len(batches))
    quota = quota.spend(len(batches))
    # today's key takes the new ids, and any in-window ids of older state (whose record is emptied below)
    new = {i: t for i, t in zip(state.sent_ids, state.sent_ts, strict=True) if t >= since}
    new.update((x.sample_id, x.ts) for batch in batches for x in batch)
    if new:
        today = tables.sent.get(sent_key(device, pending.day)) or IdList()
        plan.put(tables.sent, partition, sent_key(device, pending.day),
                 IdList([*today.ids, *new], [*today.ts, *new.values()]))
        days = sorted({*days, pending.day})
    for day in stale_days:
        plan.drop(tables.sent, partition, sent_key(device, day))
    for part in pending.got:
        plan.drop(tables.parts, partition, part_key(device, pending.request_id, part))
    others = [p for p in state.pending if p.request_id != pending.request_id]
    plan.put(tables.devices, partition, device.encode(),
             with_(state, day=quota.day, used=quota.used, sent_ids=[], sent_ts=[], sent_days=days,
                   pending=others, done=[*state.done, pending.request_id][-DONE_KEEP:]))
    plan.count("batches", len(batches))
    if not batches:
        notice(plan, device, pending.request_id, pending.day, "exhausted", quota.used)
    elif quota.remaining(settings.batches_per_day) == 0:
        notice(plan, device, pending.request_id, pending.day, "quota", quota.used)
    return plan


def sent_in_window(device: str, state: DeviceState, sent: KeyedState[IdList],
                   since: int) -> tuple[dict[str, int], list[int], list[int]]:
    """Ids sent to the device with ts in the window; the days still holding some, and those that do not."""
    out = {i: t for i, t in zip(state.sent_ids, state.sent_ts, strict=True) if t >= since}  # older state
    days, stale = [], []
    for day in state.sent_days:
        ids = sent.get(sent_key(device, day)) or IdList()
        window = {i: t for i, t in zip(ids.ids, ids.ts, strict=True) if t >= since}
        out.update(window)
        (days if window or day * DAY >= since else stale).append(day)
    return out, days, stale


def assemble_batches(pending: PendingGather, sent: dict[str, int], remaining: int,
                     settings: Settings) -> list[list[Sample]]:
    """At most `remaining` batches of 25 (≤ 40) samples not yet sent, in KNN rank order of their owners."""
    by_owner: dict[str, list[Sample]] = {}
    for record in pending.samples:
        by_owner.setdefault(record.user, []).append(record.to_sample())
    # KNN rank order, whatever order the partitions answered in: same input, same batches
    rank = sorted(zip(pending.ranks, pending.neighbours, strict=True))
    merged = merge_answers(by_owner, [n for _, n in rank], sent, remaining * settings.batch_max)
    return chunk(merged, settings.batch_size, settings.batch_max)[:remaining]


def send_batch(plan: Plan, device: str, user: str, pending: PendingGather, batch_id: str,
               batch: list[Sample], of: int) -> None:
    """The batch down the tunnel, then its audit record (ids and owners, not copies)."""
    payload = pack_samples(batch)
    plan.send("down", device, DownBatch(device, batch_id, pending.request_id, pending.day, len(batch), payload,
                                        of=of))
    plan.send("batch-log", device, BatchRecord(device, user, pending.day, batch_id, pending.request_id,
                                               [x.sample_id for x in batch], [x.user for x in batch],
                                               len(payload)))


def notice(plan: Plan, device: str, request_id: str, day: int, reason: str, used: int) -> None:
    plan.send("down", device, DownNotice(device, request_id, day, reason, used))
    plan.count(f"notice_{reason}")


def register(ctx: CloudContext) -> None:
    tables = AssembleState(EventTableState[DeviceState](ctx.table("devices")),
                           EventTableState[NeighbourSamples](ctx.table("gather-parts")),
                           EventTableState[IdList](ctx.table("sent")))

    @ctx.app.agent(ctx.topic("gather"), name="assemble")
    async def assemble(stream: faust.StreamT) -> None:
        async for event in stream.events():
            record = await ctx.accept("assemble", event, "gather")
            partition = event.message.partition
            if isinstance(record, DevicePull):
                await perform(ctx, "assemble", on_pull(record, partition, tables, ctx.settings))
            elif isinstance(record, NeighbourSamples):
                await perform(ctx, "assemble", on_answer(record, partition, tables, ctx.settings))
            if record is not None:
                ctx.stage("assemble").processed += 1
