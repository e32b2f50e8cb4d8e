"""Ingest agent: validate up-tunnel messages, desensitize, turn events into uniquely-id'd samples."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import faust

from agents.context import CloudContext
from core.features import FeatureSpace, History, event_to_sample
from core.privacy import device_pseudonym, user_pseudonym
from core.sample import Sample
from streams.schemas import (
    BehaviourEvent, DevicePull, HistoryState, PullRequest, SampleBatch, SampleRecord, UpEnvelope,
)

SAMPLE_ACTIONS = frozenset({"impression", "click"})  # other actions only extend the history
DAY = 86_400


def register(ctx: CloudContext) -> None:
    histories = ctx.table("ingest-history")
    key = ctx.settings.pseudonym_key

    @ctx.app.agent(ctx.topic("up"), name="ingest")
    async def ingest(stream: faust.StreamT) -> None:
        async for event in stream.events():
            record = await ctx.accept("ingest", event, "up")
            if isinstance(record, UpEnvelope):
                device = device_pseudonym(key, record.device_id)
                for user_id, events in _by_user(record.events).items():
                    user = user_pseudonym(key, user_id)
                    state = histories.get(user.encode()) or HistoryState()
                    samples, state = build_samples(user, events, state, ctx.settings.features)
                    if samples:  # output before state: a crash in between re-sends, never loses
                        batch = SampleBatch(user, device, [SampleRecord.of(s) for s in samples])
                        await ctx.send("samples", user, batch)
                    histories[user.encode()] = state
                    ctx.stage("ingest").extra["samples"] += len(samples)
            elif isinstance(record, PullRequest):
                pull = DevicePull(record.request_id, device_pseudonym(key, record.device_id),
                                  user_pseudonym(key, record.user_id), record.ts // DAY, record.max_batches)
                await ctx.send("gather", pull.device, pull)
            if record is not None:
                ctx.stage("ingest").processed += 1


def _by_user(events: Iterable[BehaviourEvent]) -> dict[str, list[BehaviourEvent]]:
    grouped: dict[str, list[BehaviourEvent]] = defaultdict(list)
    for e in events:
        grouped[e.user_id].append(e)
    return grouped


def build_samples(
    user: str, events: list[BehaviourEvent], state: HistoryState, space: FeatureSpace, seen_cap: int = 512
) -> tuple[list[Sample], HistoryState]:
    """Events (any order) → samples in event-time order; already-seen sample ids are skipped.

    Skipping seen ids makes a redelivered envelope a no-op (idempotent ingest). Raw profile
    values are hashed inside `event_to_sample` and go no further.
    """
    history = History(tuple(state.items), tuple(tuple(t) for t in state.tags))
    seen = dict.fromkeys(state.seen)
    samples = []
    for e in sorted(events, key=lambda e: (e.ts, e.item_id, e.action)):
        fields = {"ts": e.ts, "item_id": e.item_id, "item_tags": e.item_tags, "action": e.action,
                  "profile": e.profile, "label": e.label}
        sample, extended = event_to_sample(user, fields, history, space)
        if sample.sample_id in seen:
            continue
        seen[sample.sample_id] = None
        history = extended
        if e.action in SAMPLE_ACTIONS:
            samples.append(sample)
    kept = list(seen)[-seen_cap:]
    return samples, HistoryState(list(history.items), [list(t) for t in history.tags], kept)
