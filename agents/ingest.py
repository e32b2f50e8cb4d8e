"""Ingest agent: validate up-tunnel messages, desensitize, turn events into uniquely-id'd samples."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import faust

from agents.context import Accepted, CloudContext, put, segments
from core.features import FeatureSpace, History, event_to_sample
from core.privacy import device_pseudonym, user_pseudonym
from core.sample import DAY, SAMPLE_ACTIONS, Sample
from streams.schemas import (
    BehaviourEvent, DevicePull, HistoryState, PullRequest, SampleBatch, UpEnvelope,
)

# Samples per SampleBatch: a batch of envelopes may hold many of one user's; at most ~300
# bytes each keeps every SampleBatch well under the 1 MB message limit the next stage enforces.
MAX_BATCH_SAMPLES = 1000


@dataclass
class UserIngest:
    """One user's part of a batch: its history as it evolves and the sample batches to send."""

    history: HistoryState
    partition: int = 0  # of the last envelope that touched the user: where one at a time wrote last
    chunks: list[tuple[str, list[Sample]]] = field(default_factory=list)  # (device, samples)

    def add(self, device: str, samples: list[Sample]) -> None:
        """Consecutive samples from one device share a batch; a device change starts a new one."""
        for sample in samples:
            last = self.chunks[-1] if self.chunks else None
            if last is None or last[0] != device or len(last[1]) >= MAX_BATCH_SAMPLES:
                self.chunks.append((device, []))
            self.chunks[-1][1].append(sample)


def register(ctx: CloudContext) -> None:
    histories = ctx.table("ingest-history")
    key = ctx.settings.pseudonym_key

    @ctx.app.agent(ctx.topic("up"), name="ingest")
    async def ingest(stream: faust.StreamT) -> None:
        async for events in ctx.batches(stream):
            accepted = await ctx.accept_all("ingest", events, "up")
            for run, pull in segments(accepted, PullRequest):  # a pull comes after its samples
                await _ingest(run)
                if pull is not None:
                    assert isinstance(pull[1], PullRequest)
                    await _forward(pull[1])
            ctx.stage("ingest").processed += len(accepted)

    async def _ingest(run: list[Accepted]) -> None:
        """Envelopes in order; each user's history is read and written once per run."""
        users: dict[str, UserIngest] = {}
        for event, envelope in run:
            assert isinstance(envelope, UpEnvelope)
            device = device_pseudonym(key, envelope.device_id)
            for user_id, events in _by_user(envelope.events).items():
                user = user_pseudonym(key, user_id)
                part = users.get(user) or UserIngest(histories.get(user.encode()) or HistoryState())
                samples, part.history = build_samples(user, events, part.history, ctx.settings.features)
                part.partition = event.message.partition
                part.add(device, samples)
                users[user] = part
                ctx.stage("ingest").extra["samples"] += len(samples)
        for user, part in users.items():  # output before state: a crash in between re-sends, never loses
            for device, samples in part.chunks:
                await ctx.send("samples", user, SampleBatch.of(user, device, samples))
        for user, part in users.items():
            await put(histories, part.partition, user.encode(), part.history)

    async def _forward(record: PullRequest) -> None:
        pull = DevicePull(record.request_id, device_pseudonym(key, record.device_id),
                          user_pseudonym(key, record.user_id), record.ts // DAY, record.max_batches)
        await ctx.send("gather", pull.device, pull)


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
