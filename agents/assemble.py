"""Assemble agent, on the device's partition: dedup, chunk, daily quota, compress, down-tunnel."""

from __future__ import annotations

import faust

from agents.context import CloudContext
from core.batching import DailyQuota, chunk
from core.matching import merge_answers, window_start_ts
from core.sample import Sample
from streams.schemas import (
    BatchRecord, DevicePull, DeviceState, DownBatch, DownNotice, MatchRequest, NeighbourSamples,
    PendingGather, pack_samples,
)


DONE_KEEP = 256  # answered request ids remembered per device (12 a day for the 7-day window, and slack)


def register(ctx: CloudContext) -> None:
    devices = ctx.table("devices")
    s = ctx.settings

    @ctx.app.agent(ctx.topic("gather"), name="assemble")
    async def assemble(stream: faust.StreamT) -> None:
        async for event in stream.events():
            record = await ctx.accept("assemble", event, "gather")
            if isinstance(record, DevicePull):
                await _on_pull(record)
            elif isinstance(record, NeighbourSamples):
                await _on_answer(record)
            if record is not None:
                ctx.stage("assemble").processed += 1

    async def _on_pull(pull: DevicePull) -> None:
        key = pull.device.encode()
        state = devices.get(key) or DeviceState(pull.user)
        if pull.request_id in state.done or any(p.request_id == pull.request_id for p in state.pending):
            ctx.stage("assemble").extra["duplicate_pulls"] += 1  # redelivered: answered or being answered
            return
        quota = DailyQuota(state.day, state.used).on(pull.day)
        remaining = min(quota.remaining(s.batches_per_day), pull.max_batches)
        if remaining <= 0:
            await _notice(pull.device, pull.request_id, pull.day, "quota", quota.used)
            return
        pending = PendingGather(pull.request_id, pull.day, 0, [], [], [])
        capacity = remaining * s.batch_size
        # output before state: a pending request whose match request was lost would wait forever
        await ctx.send("match-requests", pull.user,
                       MatchRequest(pull.request_id, pull.user, pull.device, pull.day, capacity))
        devices[key] = DeviceState(pull.user, quota.day, quota.used, state.sent_ids, state.sent_ts,
                                   [*state.pending, pending], state.done)

    async def _on_answer(answer: NeighbourSamples) -> None:
        key = answer.device.encode()
        state = devices.get(key)
        pending = next((p for p in state.pending if p.request_id == answer.request_id), None) if state else None
        if state is None or pending is None or answer.part in pending.got:
            ctx.stage("assemble").extra["stale_answers"] += 1  # redelivered or unknown request
            return
        pending = PendingGather(pending.request_id, pending.day, answer.parts, [*pending.got, answer.part],
                                [*pending.neighbours, *answer.neighbours], [*pending.samples, *answer.samples],
                                [*pending.ranks, *answer.ranks])
        others = [p for p in state.pending if p.request_id != pending.request_id]
        if len(pending.got) < pending.parts:
            devices[key] = DeviceState(state.user, state.day, state.used, state.sent_ids, state.sent_ts,
                                       [*others, pending], state.done)
            return
        await _deliver(answer.device, state, pending, others)

    async def _deliver(device: str, state: DeviceState, pending: PendingGather,
                       others: list[PendingGather]) -> None:
        """All parts are in: merge newest-first by neighbour rank, dedup, batch within quota."""
        quota = DailyQuota(state.day, state.used).on(pending.day)
        since = window_start_ts(pending.day, s.match_window_days)
        sent = {i: t for i, t in zip(state.sent_ids, state.sent_ts, strict=True) if t >= since}
        by_owner: dict[str, list[Sample]] = {}
        for record in pending.samples:
            by_owner.setdefault(record.user, []).append(record.to_sample())
        remaining = quota.remaining(s.batches_per_day)
        # KNN rank order, whatever order the partitions answered in: same input, same batches
        rank = sorted(zip(pending.ranks, pending.neighbours, strict=True))
        merged = merge_answers(by_owner, [n for _, n in rank], sent, remaining * s.batch_max)
        batches = chunk(merged, s.batch_size, s.batch_max)[:remaining]
        for n, batch in enumerate(batches):
            await _send_batch(device, state.user, pending, f"{pending.request_id}-{n}", batch, len(batches))
            sent.update((x.sample_id, x.ts) for x in batch)
        quota = quota.spend(len(batches))
        devices[device.encode()] = DeviceState(state.user, quota.day, quota.used, list(sent),
                                               list(sent.values()), others,
                                               [*state.done, pending.request_id][-DONE_KEEP:])
        ctx.stage("assemble").extra["batches"] += len(batches)
        if not batches:
            await _notice(device, pending.request_id, pending.day, "exhausted", quota.used)
        elif quota.remaining(s.batches_per_day) == 0:
            await _notice(device, pending.request_id, pending.day, "quota", quota.used)

    async def _send_batch(device: str, user: str, pending: PendingGather, batch_id: str,
                          batch: list[Sample], of: int) -> None:
        payload = pack_samples(batch)
        down = DownBatch(device, batch_id, pending.request_id, pending.day, len(batch), payload, of=of)
        await ctx.send("down", device, down)
        audit = BatchRecord(device, user, pending.day, batch_id, pending.request_id,
                            [x.sample_id for x in batch], [x.user for x in batch], len(payload))
        await ctx.send("batch-log", device, audit)

    async def _notice(device: str, request_id: str, day: int, reason: str, used: int) -> None:
        await ctx.send("down", device, DownNotice(device, request_id, day, reason, used))
        ctx.stage("assemble").extra[f"notice_{reason}"] += 1
