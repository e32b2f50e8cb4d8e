"""What a device remembers between messages: its record (one msgpack row) and its state keys."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core.features import FeatureSpace, History, event_to_sample
from core.sample import SAMPLE_ACTIONS, Sample
from streams.schemas import BehaviourEvent

SEEN_CAP = 512  # recent event ids remembered, so a redelivered message adds nothing twice
SEEN_ID_CHARS = 12  # 48 bits of the event's sample id: collisions among 512 are negligible, state stays small
STATE_KEY = "device"  # the record's key in the device's state table
KEPT_KEY = "kept_ids"  # experiments only: which outside samples the filter kept (id prefixes)


@dataclass
class DeviceRecord:
    """Everything a device remembers between messages (one msgpack row in its database)."""

    device_id: str = ""  # raw id: only the device knows it (up-tunnel key)
    user_id: str = ""  # raw user id, used locally and in pull requests (ingest pseudonymizes)
    now_ts: int = 0  # the device's event-time clock
    day: int = -1  # quota day
    used: int = 0  # batches received on `day`
    stopped: bool = False  # a notice ended pulling for `day`
    request: str = ""  # open pull request
    request_of: int = 0  # batches announced for it (0: none seen yet)
    request_got: list[str] = field(default_factory=list)
    pulls: int = 0
    items: list[int] = field(default_factory=list)  # behaviour history (hashed), oldest first
    tags: list[list[int]] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)
    version: str = ""  # model version in use
    trains: int = 0
    filters: int = 0
    bytes_unfiltered: int = 0
    bytes_since_train: int = 0
    filter_ms_since_train: float = 0.0
    filter_cpu_ms_since_train: float = 0.0
    maintained_day: int = -1
    arm: str = ""  # the experiment arm this device runs (see core.arms)
    trained_day: int = -1  # the last quota day Algorithm 3 ran on
    steps_accepted: int = 0  # gated updates kept, over every training
    steps_total: int = 0
    # (before, after) of the gate's metric per training that took steps: measured on the same local
    # validation samples that selected the steps, so "after" is in-sample by construction
    valid_log: list[list[float]] = field(default_factory=list)

    @classmethod
    def from_plain(cls, body: Mapping[str, Any] | None) -> DeviceRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (body or {}).items() if k in known})

    def to_plain(self) -> dict[str, Any]:
        """Shallow: msgpack walks the lists itself (dataclasses.asdict would deep-copy them)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def history(self) -> History:
        return History(tuple(self.items), tuple(tuple(t) for t in self.tags))

    def extend(self, events: Sequence[BehaviourEvent], space: FeatureSpace) -> tuple[list[Sample], int]:
        """Unseen events → history (all) and samples (impressions and clicks), in event-time order.

        Returns the samples and how many events were new.
        """
        history, seen = self.history(), dict.fromkeys(self.seen)
        samples, fresh = [], 0
        for e in sorted(events, key=lambda e: (e.ts, e.item_id, e.action)):
            sample, extended = event_to_sample(e.user_id, event_fields(e), history, space)
            event_id = sample.sample_id[:SEEN_ID_CHARS]
            if event_id in seen:
                continue
            seen[event_id] = None
            fresh += 1
            history = extended
            self.user_id = e.user_id
            if e.action in SAMPLE_ACTIONS:
                samples.append(sample)
        self.items, self.tags = list(history.items), [list(t) for t in history.tags]
        self.seen = list(seen)[-SEEN_CAP:]
        return samples, fresh

    def roll_day(self, day: int) -> None:
        """A new event-time day: fresh quota, pulling allowed again."""
        if day > self.day:
            self.day, self.used, self.stopped = day, 0, False
            self.request, self.request_of, self.request_got = "", 0, []

    @property
    def request_open(self) -> bool:
        return bool(self.request) and (self.request_of == 0 or len(self.request_got) < self.request_of)


def event_fields(e: BehaviourEvent | Mapping[str, Any]) -> Mapping[str, Any]:
    """What `event_to_sample` reads of an event; a bare mapping is an impression unless it says otherwise."""
    if isinstance(e, BehaviourEvent):
        return {
            "ts": e.ts,
            "item_id": e.item_id,
            "item_tags": e.item_tags,
            "action": e.action,
            "profile": e.profile,
            "label": e.label,
        }
    return {"action": "impression", **e}
