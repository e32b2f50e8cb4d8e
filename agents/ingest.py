"""Ingest agent: validate up-tunnel messages, desensitize, turn events into uniquely-id'd samples."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import faust

from agents.context import CloudContext, partitioned, segments
from agents.plan import Plan, perform
from agents.state import KeyedState, TableState
from core.features import History
from core.ingest import IngestHistory, build_samples
from core.privacy import device_pseudonym, user_pseudonym
from core.sample import DAY, Sample
from streams.schemas import BehaviourEvent, DevicePull, HistoryState, PullRequest, SampleBatch, UpEnvelope
from streams.settings import Settings

# Samples per SampleBatch: a batch of envelopes may hold many of one user's; at most ~300
# bytes each keeps every SampleBatch well under the 1 MB message limit the next stage enforces.
MAX_BATCH_SAMPLES = 1000


def from_state(state: HistoryState | None) -> IngestHistory:
    if state is None:
        return IngestHistory()
    return IngestHistory(History(tuple(state.items), tuple(tuple(t) for t in state.tags)), tuple(state.seen))


def to_state(history: IngestHistory) -> HistoryState:
    return HistoryState(list(history.history.items), [list(t) for t in history.history.tags], list(history.seen))


@dataclass
class UserIngest:
    """One user's part of a batch: its history as it evolves and the sample batches to send."""

    history: IngestHistory
    partition: int = 0  # of the last envelope that touched the user: where one at a time wrote last
    chunks: list[tuple[str, list[Sample]]] = field(default_factory=list)  # (device, samples)

    def add(self, device: str, samples: list[Sample]) -> None:
        """Consecutive samples from one device share a batch; a device change starts a new one."""
        for sample in samples:
            last = self.chunks[-1] if self.chunks else None
            if last is None or last[0] != device or len(last[1]) >= MAX_BATCH_SAMPLES:
                self.chunks.append((device, []))
            self.chunks[-1][1].append(sample)


def handle(run: Sequence[tuple[int, UpEnvelope]], histories: KeyedState[HistoryState],
           settings: Settings) -> Plan:
    """Envelopes (with their partitions) in order; each user's history is read and written once per run."""
    plan = Plan()
    users = ingest_users(run, histories, settings, plan)
    for user, part in users.items():  # output before state: a crash in between re-sends, never loses
        for device, samples in part.chunks:
            plan.send("samples", user, SampleBatch.of(user, device, samples))
    for user, part in users.items():
        plan.put(histories, part.partition, user.encode(), to_state(part.history))
    return plan


def ingest_users(run: Sequence[tuple[int, UpEnvelope]], histories: KeyedState[HistoryState],
                 settings: Settings, plan: Plan) -> dict[str, UserIngest]:
    """Each user's samples and history after the run, users in order of first appearance."""
    key = settings.pseudonym_key
    users: dict[str, UserIngest] = {}
    for partition, envelope in run:
        device = device_pseudonym(key, envelope.device_id)
        for user_id, events in by_user(envelope.events).items():
            user = user_pseudonym(key, user_id)
            part = users.get(user) or UserIngest(from_state(histories.get(user.encode())))
            samples, part.history = build_samples(user, events, part.history, settings.features)
            part.partition = partition
            part.add(device, samples)
            users[user] = part
            plan.count("samples", len(samples))
    return users


def on_pull(pull: PullRequest, settings: Settings) -> Plan:
    """A device's pull, desensitized, to its device's gather partition (after the samples before it)."""
    key = settings.pseudonym_key
    forward = DevicePull(pull.request_id, device_pseudonym(key, pull.device_id),
                         user_pseudonym(key, pull.user_id), pull.ts // DAY, pull.max_batches)
    plan = Plan()
    plan.send("gather", forward.device, forward)
    return plan


def by_user(events: Iterable[BehaviourEvent]) -> dict[str, list[BehaviourEvent]]:
    grouped: dict[str, list[BehaviourEvent]] = defaultdict(list)
    for e in events:
        grouped[e.user_id].append(e)
    return grouped


def register(ctx: CloudContext) -> None:
    histories = TableState[HistoryState](ctx.table("ingest-history"))

    @ctx.app.agent(ctx.topic("up"), name="ingest")
    async def ingest(stream: faust.StreamT) -> None:
        async for events in ctx.batches(stream):
            accepted = await ctx.accept_all("ingest", events, "up")
            for run, pull in segments(accepted, PullRequest):  # a pull comes after its samples
                await perform(ctx, "ingest", handle(partitioned(run, UpEnvelope), histories, ctx.settings))
                if pull is not None:
                    assert isinstance(pull[1], PullRequest)
                    await perform(ctx, "ingest", on_pull(pull[1], ctx.settings))
            ctx.stage("ingest").processed += len(accepted)
