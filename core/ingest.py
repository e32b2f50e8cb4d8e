"""Ingest's pure step: one user's behaviour events → new samples, an event seen before skipped."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from core.features import FeatureSpace, History, event_to_sample
from core.sample import SAMPLE_ACTIONS, Sample

SEEN_CAP = 512  # emitted sample ids remembered per user against redelivery


class BehaviourLike(Protocol):
    """A behaviour event as ingest reads it (the up-tunnel's `BehaviourEvent` is one)."""

    @property
    def ts(self) -> int: ...
    @property
    def item_id(self) -> str: ...
    @property
    def item_tags(self) -> Sequence[str]: ...
    @property
    def action(self) -> str: ...
    @property
    def profile(self) -> Mapping[str, str] | None: ...
    @property
    def label(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class IngestHistory:
    """What ingest keeps per user: its hashed recent behaviour and its recently emitted sample ids."""

    history: History = field(default_factory=History)
    seen: tuple[str, ...] = ()  # oldest first


def build_samples(user: str, events: Iterable[BehaviourLike], state: IngestHistory, space: FeatureSpace,
                  seen_cap: int = SEEN_CAP) -> tuple[list[Sample], IngestHistory]:
    """Events (any order) → samples in event-time order; already-seen sample ids are skipped.

    Skipping seen ids makes a redelivered envelope a no-op (idempotent ingest). Raw profile
    values are hashed inside `event_to_sample` and go no further.
    """
    history = state.history
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
    return samples, IngestHistory(history, tuple(seen)[-seen_cap:])
