"""Wire messages of every topic: typed msgspec records whose limits are their field types' `Meta`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, ClassVar

from msgspec import Meta, field

from core.sample import Sample
from streams.schemas.codec import Finite, Profile, Record, SchemaError, StrMap, register


def _ints(lo: int, hi: int) -> Meta:
    return Meta(ge=lo, le=hi)


def _at_most(n: int) -> Meta:
    return Meta(max_length=n)


Str16 = Annotated[str, _at_most(16)]
Str32 = Annotated[str, _at_most(32)]
Str64 = Annotated[str, _at_most(64)]
Str128 = Annotated[str, _at_most(128)]
Time = Annotated[int, _ints(0, 2**40)]  # unix seconds; also counts
U31 = Annotated[int, _ints(0, 2**31)]  # days, hashed ids, byte counts
Bit = Annotated[int, _ints(0, 1)]
Count = Annotated[int, _ints(0, 100_000)]
Parts = Annotated[int, _ints(1, 100_000)]
Batches = Annotated[int, _ints(1, 1000)]
Hashes = list[U31]
Score = Annotated[float, Meta(ge=-2.0, le=2.0)]


class BehaviourEvent(Record):
    """One thing the user did on the device (event time in unix seconds)."""

    KIND: ClassVar[str] = "event"
    user_id: Str128
    ts: Time
    item_id: Str128
    item_tags: Annotated[list[str], _at_most(64)]
    action: Str32
    # values may arrive as str, int, float or bool; decoding turns them into strings (`profile_value`)
    profile: Profile | None = None
    label: Bit | None = None


Events = Annotated[list[BehaviourEvent], _at_most(100_000)]


class UpEnvelope(Record):
    """Up-tunnel: a device's aggregated behaviour events (paper: aggregated before reporting)."""

    KIND: ClassVar[str] = "up.events"
    device_id: Str128
    events: Events
    sent_ts: Time = 0


class PullRequest(Record):
    """Up-tunnel: a device asks for more matched-sample batches for the event-time day of `ts`."""

    KIND: ClassVar[str] = "up.pull"
    device_id: Str128
    user_id: Str128
    ts: Time
    request_id: Str64
    max_batches: Batches = 12


class DeviceActions(Record):
    """The user's side, replayed: what the user does on device `device_id`, in event time.

    Keyed by the device's pseudonym so it lands on the same partition as the device's
    down-tunnel traffic and one fleet process hosts both.
    """

    KIND: ClassVar[str] = "device.actions"
    device_id: Str128
    events: Events
    day: U31 = 0


class DevicePast(Record):
    """What the user did before the replay reached the device: it builds the behaviour history
    (the sequence features) only — no samples, no scores, nothing sent up (the cloud has it)."""

    KIND: ClassVar[str] = "device.past"
    device_id: Str128
    events: Events


class SampleRecord(Record):
    """Wire form of `core.sample.Sample`."""

    KIND: ClassVar[str] = "sample"
    sample_id: Str64
    user: Str64
    ts: Time
    item: U31
    tags: Annotated[Hashes, _at_most(64)]
    seq: Annotated[Hashes, _at_most(1000)]
    seq_tags: Annotated[list[Hashes], _at_most(1000)]
    profile: Annotated[Hashes, _at_most(64)]
    label: Bit

    @classmethod
    def of(cls, s: Sample) -> SampleRecord:
        return cls(s.sample_id, s.user, s.ts, s.item, list(s.tags), list(s.seq),
                   list(map(list, s.seq_tags)), list(s.profile), s.label)

    def to_sample(self) -> Sample:
        return Sample(self.sample_id, self.user, self.ts, self.item, tuple(self.tags),
                      tuple(self.seq), tuple(map(tuple, self.seq_tags)),
                      tuple(self.profile), self.label)


Column = Meta(max_length=100_000)


class SampleSet(Record):
    """Samples of one user as columns, their behaviour sequences windows of one shared timeline.

    A user's consecutive samples share all but the newest behaviours of their sequences, so
    sample i's sequence is `timeline[seq_from[i]:seq_to[i]]` (tags alike): ~70 instead of
    ~240 bytes a sample, and decoding checks a few long int lists instead of ~25 short ones
    per sample. `of` and `to_samples` round-trip any samples exactly.
    """

    KIND: ClassVar[str] = "sample.set"
    timeline: Annotated[Hashes, _at_most(10_000_000)]
    timeline_tags: Annotated[list[Hashes], _at_most(10_000_000)]
    ids: Annotated[list[str], Column]
    ts: Annotated[list[Time], Column]
    items: Annotated[Hashes, Column]
    tags: Annotated[list[Hashes], Column]
    profiles: Annotated[list[Hashes], Column]
    labels: Annotated[list[Bit], Column]
    seq_from: Annotated[Hashes, Column]
    seq_to: Annotated[Hashes, Column]

    def __post_init__(self) -> None:
        """What the field checks cannot see: equal columns, windows inside the timeline."""
        n = len(self.ids)
        if any(len(c) != n for c in (self.ts, self.items, self.tags, self.profiles, self.labels,
                                     self.seq_from, self.seq_to)):
            raise SchemaError("inconsistent", f"{self.KIND}: columns of different lengths")
        if len(self.timeline_tags) != len(self.timeline):
            raise SchemaError("inconsistent", f"{self.KIND}: timeline and its tags differ in length")
        if any(not 0 <= a <= b <= len(self.timeline) for a, b in zip(self.seq_from, self.seq_to)):
            raise SchemaError("inconsistent", f"{self.KIND}: a sequence window outside the timeline")
        if any(len(i) > 64 for i in self.ids) or any(len(t) > 64 for t in self.tags) or \
                any(len(p) > 64 for p in self.profiles) or \
                any(b - a > 1000 for a, b in zip(self.seq_from, self.seq_to)):
            raise SchemaError("out_of_range", f"{self.KIND}: an id, tags, profile or sequence too long")

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def of(cls, samples: Sequence[Sample]) -> SampleSet:
        timeline: list[int] = []
        tags: list[tuple[int, ...]] = []
        seq_from, seq_to = [], []
        for s in samples:
            n = len(s.seq)
            known = next(k for k in range(n, -1, -1) if _timeline_ends_with(timeline, tags, s, k))
            timeline.extend(s.seq[known:])
            tags.extend(s.seq_tags[known:])
            seq_from.append(len(timeline) - n)
            seq_to.append(len(timeline))
        return cls(timeline, list(map(list, tags)), [s.sample_id for s in samples], [s.ts for s in samples],
                   [s.item for s in samples], [list(s.tags) for s in samples],
                   [list(s.profile) for s in samples], [s.label for s in samples], seq_from, seq_to)

    def sample_at(self, i: int, user: str) -> Sample:
        """Sample i alone (what `to_samples` gives at i): a query serves a few of a user's hundreds.

        `to_samples` tuples the shared timeline once for every sample; this tuples only sample i's window.
        """
        a, b = self.seq_from[i], self.seq_to[i]
        return Sample(self.ids[i], user, self.ts[i], self.items[i], tuple(self.tags[i]), tuple(self.timeline[a:b]),
                      tuple(map(tuple, self.timeline_tags[a:b])), tuple(self.profiles[i]), self.labels[i])

    def to_samples(self, user: str) -> list[Sample]:
        timeline, tags = tuple(self.timeline), tuple(map(tuple, self.timeline_tags))
        columns = zip(self.ids, self.ts, self.items, self.tags, self.profiles, self.labels, self.seq_from,
                      self.seq_to, strict=True)
        return [Sample(i, user, ts, item, tuple(t), timeline[a:b], tags[a:b], tuple(p), label)
                for i, ts, item, t, p, label, a, b in columns]


def _timeline_ends_with(timeline: list[int], tags: list[tuple[int, ...]], sample: Sample, k: int) -> bool:
    """The timeline ends with the first `k` behaviours of the sample's sequence."""
    if k > len(timeline):
        return False
    return k == 0 or (timeline[-k:] == list(sample.seq[:k]) and tags[-k:] == list(sample.seq_tags[:k]))


class SampleBatchV1(Record):
    """Samples of one pseudonymous user, one full record each (v1: read from older logs only)."""

    KIND: ClassVar[str] = "sample.batch"
    user: Str64
    device: Str64
    samples: Annotated[list[SampleRecord], _at_most(100_000)]

    def to_samples(self) -> list[Sample]:
        return [r.to_sample() for r in self.samples]


class SampleBatch(Record):
    """Samples of one pseudonymous user, in event-time order, produced by ingest."""

    KIND: ClassVar[str] = "sample.batch"
    VERSION: ClassVar[int] = 2
    user: Str64
    device: Str64
    samples: SampleSet

    @classmethod
    def of(cls, user: str, device: str, samples: Sequence[Sample]) -> SampleBatch:
        if any(x.user != user for x in samples):
            raise ValueError(f"a SampleBatch of {user!r} holds only that user's samples")
        return cls(user, device, SampleSet.of(samples))

    def to_samples(self) -> list[Sample]:
        return self.samples.to_samples(self.user)


class DayEnd(Record):
    """Control: event-time day `day` is complete on this partition (end-of-day work may run)."""

    KIND: ClassVar[str] = "control.day_end"
    day: U31


class UserVector(Record):
    """Algorithm 1: the mean user feature, published to a compacted topic keyed by user."""

    KIND: ClassVar[str] = "user.vector"
    user: Str64
    vector: Annotated[list[Finite], _at_most(4096)]
    count: Time
    last_ts: Time


class MatchRequest(Record):
    """Ask the match agent for a user's neighbours; `capacity` samples may still be delivered."""

    KIND: ClassVar[str] = "match.request"
    request_id: Str64
    user: Str64
    device: Str64
    day: U31
    capacity: Count
    reason: Str16 = "pull"


Neighbours = Annotated[list[str], _at_most(10_000)]
Ranks = Annotated[list[Count], _at_most(10_000)]


class MatchResult(Record):
    """KNN result of a user on an event-time day (kept for the match window)."""

    KIND: ClassVar[str] = "match.result"
    user: Str64
    day: U31
    neighbours: Neighbours
    scores: Annotated[list[Score], _at_most(10_000)]
    asof_day: U31 = 0  # last event-time day of data used


class NeighbourQuery(Record):
    """Scatter: ask the partition owning `neighbours` for their most recent samples."""

    KIND: ClassVar[str] = "neighbour.query"
    request_id: Str64
    device: Str64
    user: Str64
    day: U31
    since_ts: Time
    want: Count
    neighbours: Neighbours
    parts: Parts = 1  # queries in this scatter
    part: Count = 0  # this query's index
    ranks: Ranks = field(default_factory=list)  # KNN rank


class NeighbourSamples(Record):
    """Gather: one partition's answer to a scatter, keyed by the target device."""

    KIND: ClassVar[str] = "neighbour.samples"
    request_id: Str64
    device: Str64
    user: Str64
    day: U31
    parts: Parts
    samples: Annotated[list[SampleRecord], _at_most(1_000_000)]
    part: Count = 0
    neighbours: Neighbours = field(default_factory=list)
    ranks: Ranks = field(default_factory=list)


class DevicePull(Record):
    """A desensitized pull request on the device's gather partition."""

    KIND: ClassVar[str] = "gather.pull"
    request_id: Str64
    device: Str64
    user: Str64
    day: U31
    max_batches: Batches


class DownBatch(Record):
    """Down-tunnel: one batch of matched samples for one device, payload zlib(msgpack)."""

    KIND: ClassVar[str] = "down.batch"
    device: Str64
    batch_id: Str64
    request_id: Str64
    day: U31
    n_samples: Count
    payload: Annotated[bytes, _at_most(10_000_000)]
    model_version: Str64 = ""
    of: Batches = 1  # batches answering this request


class DownNotice(Record):
    """Down-tunnel: nothing more for this device today (`reason`); the device may train now."""

    KIND: ClassVar[str] = "down.notice"
    device: Str64
    request_id: Str64
    day: U31
    reason: Str64
    batches_today: Annotated[int, _ints(0, 1000)] = 0


class BatchRecord(Record):
    """Audit log of a delivered batch: who got which sample ids from whom (ids, not copies)."""

    KIND: ClassVar[str] = "batch.log"
    device: Str64
    user: Str64
    day: U31
    batch_id: Str64
    request_id: Str64
    sample_ids: Annotated[list[str], _at_most(1000)]
    sample_owners: Annotated[list[str], _at_most(1000)]
    bytes: U31


Blob = Annotated[bytes, _at_most(100_000_000)]


class GlobalModel(Record):
    """The cloud's global DIN, delivered to devices as their initial model."""

    KIND: ClassVar[str] = "model.global"
    version: Str64
    created_ts: Time
    weights: Blob
    space: StrMap = field(default_factory=dict)
    metrics: StrMap = field(default_factory=dict)


class DeadLetter(Record):
    """A message that could not be processed, with where it came from and why."""

    KIND: ClassVar[str] = "dead.letter"
    raw: Blob
    reason: Str64
    detail: Annotated[str, _at_most(4096)]
    topic: Annotated[str, _at_most(256)]
    partition: Annotated[int, _ints(-1, 2**31)]
    offset: Annotated[int, _ints(-1, 2**62)]
    stage: Str64 = ""


register(BehaviourEvent, UpEnvelope, PullRequest, DeviceActions, DevicePast, SampleRecord, SampleSet,
         SampleBatchV1, SampleBatch, DayEnd, UserVector, MatchRequest, MatchResult, NeighbourQuery,
         NeighbourSamples, DevicePull, DownBatch, DownNotice, BatchRecord, GlobalModel, DeadLetter)

# Named unions for topics that carry more than one kind (topics.yaml `value`).
UNIONS: dict[str, tuple[type[Record], ...]] = {
    "UpMessage": (UpEnvelope, PullRequest),
    "SampleMessage": (SampleBatch, SampleBatchV1, DayEnd),
    "GatherMessage": (DevicePull, NeighbourSamples),
    "DownMessage": (DownBatch, DownNotice),
    "ActionMessage": (DeviceActions, DevicePast, DayEnd),
}
