"""Assemble agent, on the device's partition: dedup, chunk, daily quota, compress, down-tunnel."""

from __future__ import annotations

import faust

from agents.context import CloudContext
from agents.plan import Plan, perform
from agents.state import EventTableState, KeyedState, with_
from core.batching import DailyQuota, chunk
from core.matching import merge_answers, window_start_ts
from core.sample import Sample
from streams.schemas import (
    BatchRecord,
    DevicePull,
    DeviceState,
    DownBatch,
    DownNotice,
    MatchRequest,
    NeighbourSamples,
    PendingGather,
    pack_samples,
)
from streams.settings import Settings

DONE_KEEP = 256  # answered request ids remembered per device (12 a day for the 7-day window, and slack)


def on_pull(pull: DevicePull, partition: int, devices: KeyedState[DeviceState], settings: Settings) -> Plan:
    """A device's pull: a match request for what today's quota still allows, or a "quota" notice."""
    plan = Plan()
    key = pull.device.encode()
    state = devices.get(key) or DeviceState(pull.user)
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
    plan.put(devices, partition, key, with_(state, user=pull.user, day=quota.day, used=quota.used,
                                            pending=[*state.pending, pending]))
    return plan


def on_answer(answer: NeighbourSamples, partition: int, devices: KeyedState[DeviceState],
              settings: Settings) -> Plan:
    """One partition's answer: kept until every part is in, then delivered."""
    plan = Plan()
    key = answer.device.encode()
    state = devices.get(key)
    pending = next((p for p in state.pending if p.request_id == answer.request_id), None) if state else None
    if state is None or pending is None or answer.part in pending.got:
        plan.count("stale_answers")  # redelivered or unknown request
        return plan
    pending = with_(pending, parts=answer.parts, got=[*pending.got, answer.part],
                    neighbours=[*pending.neighbours, *answer.neighbours],
                    samples=[*pending.samples, *answer.samples], ranks=[*pending.ranks, *answer.ranks])
    others = [p for p in state.pending if p.request_id != pending.request_id]
    if len(pending.got) < pending.parts:
        plan.put(devices, partition, key, with_(state, pending=[*others, pending]))
        return plan
    return deliver(answer.device, state, pending, others, partition, devices, settings)


def deliver(device: str, state: DeviceState, pending: PendingGather, others: list[PendingGather],
            partition: int, devices: KeyedState[DeviceState], settings: Settings) -> Plan:
    """All parts are in: merge newest-first by neighbour rank, dedup, batch within quota."""
    plan = Plan()
    quota = DailyQuota(state.day, state.used).on(pending.day)
    since = window_start_ts(pending.day, settings.match_window_days)
    sent = {i: t for i, t in zip(state.sent_ids, state.sent_ts, strict=True) if t >= since}
    batches = assemble_batches(pending, sent, quota.remaining(settings.batches_per_day), settings)
    for n, batch in enumerate(batches):
        send_batch(plan, device, state.user, pending, f"{pending.request_id}-{n}", batch, len(batches))
        sent.update((x.sample_id, x.ts) for x in batch)
    quota = quota.spend(len(batches))
    plan.put(devices, partition, device.encode(),
             with_(state, day=quota.day, used=quota.used, sent_ids=list(sent), sent_ts=list(sent.values()),
                   pending=others, done=[*state.done, pending.request_id][-DONE_KEEP:]))
    plan.count("batches", len(batches))
    if not batches:
        notice(plan, device, pending.request_id, pending.day, "exhausted", quota.used)
    elif quota.remaining(settings.batches_per_day) == 0:
        notice(plan, device, pending.request_id, pending.day, "quota", quota.used)
    return plan


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
    devices = EventTableState[DeviceState](ctx.table("devices"))

    @ctx.app.agent(ctx.topic("gather"), name="assemble")
    async def assemble(stream: faust.StreamT) -> None:
        async for event in stream.events():
            record = await ctx.accept("assemble", event, "gather")
            partition = event.message.partition
            if isinstance(record, DevicePull):
                await perform(ctx, "assemble", on_pull(record, partition, devices, ctx.settings))
            elif isinstance(record, NeighbourSamples):
                await perform(ctx, "assemble", on_answer(record, partition, devices, ctx.settings))
            if record is not None:
                ctx.stage("assemble").processed += 1
