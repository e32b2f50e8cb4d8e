"""Every wire message of every topic: typed records, msgpack, explicit schema versions, validation.

`encode(record) -> bytes` and `decode(raw) -> record` are the only way bytes become messages.
Each record class has a `KIND` and a `VERSION`; the registry is keyed by `(kind, version)`, so
a new version is a new class and old decoders stay. Validation errors name the field.
"""

from __future__ import annotations

import functools
import itertools
import math
import types
import typing
import zlib
from dataclasses import MISSING, dataclass, field, fields
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import msgpack

from core.sample import Sample

DEFAULT_MAX_BYTES = 1_000_000
KIND_KEY, VERSION_KEY = "k", "v"


class SchemaError(ValueError):
    """A message that cannot be accepted; `reason` is a short machine-friendly code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _range(lo: float | None = None, hi: float | None = None, max_len: int | None = None) -> Any:
    return {"lo": lo, "hi": hi, "max_len": max_len}


PROFILE_TYPES = (str, int, float, bool)  # what a profile value may be; `profile_value` makes it a str


def profile_value(value: Any, where: str = "profile") -> str:
    """A profile value as the string that is hashed: `31`, `31.0` → "31"; `True` → "true".

    Strings pass unchanged, so messages that always carried strings hash (and encode) as before.
    """
    if type(value) is str:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SchemaError("not_finite", f"{where}: {value!r} is not a finite number")
        return str(int(value)) if value.is_integer() else repr(value)
    raise SchemaError("wrong_type", f"{where}: expected str, int, float or bool, got {type(value).__name__}")


# --------------------------------------------------------------------------- records
@dataclass(frozen=True, slots=True)
class Record:
    KIND: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1


@dataclass(frozen=True, slots=True)
class BehaviourEvent(Record):
    """One thing the user did on the device (event time in unix seconds)."""

    KIND: ClassVar[str] = "event"
    user_id: str = field(metadata=_range(max_len=128))
    ts: int = field(metadata=_range(0, 2**40))
    item_id: str = field(metadata=_range(max_len=128))
    item_tags: list[str] = field(metadata=_range(max_len=64))
    action: str = field(metadata=_range(max_len=32))
    # values may arrive as str, int, float or bool; decoding turns them into strings (`profile_value`)
    profile: dict[str, str] | None = field(default=None, metadata={"profile": True})
    label: int | None = field(default=None, metadata=_range(0, 1))


@dataclass(frozen=True, slots=True)
class UpEnvelope(Record):
    """Up-tunnel: a device's aggregated behaviour events (paper: aggregated before reporting)."""

    KIND: ClassVar[str] = "up.events"
    device_id: str = field(metadata=_range(max_len=128))
    events: list[BehaviourEvent] = field(metadata=_range(max_len=100_000))
    sent_ts: int = field(default=0, metadata=_range(0, 2**40))


@dataclass(frozen=True, slots=True)
class PullRequest(Record):
    """Up-tunnel: a device asks for more matched-sample batches for the event-time day of `ts`."""

    KIND: ClassVar[str] = "up.pull"
    device_id: str = field(metadata=_range(max_len=128))
    user_id: str = field(metadata=_range(max_len=128))
    ts: int = field(metadata=_range(0, 2**40))
    request_id: str = field(metadata=_range(max_len=64))
    max_batches: int = field(default=12, metadata=_range(1, 1000))


@dataclass(frozen=True, slots=True)
class DeviceActions(Record):
    """The user's side, replayed: what the user does on device `device_id`, in event time.

    Keyed by the device's pseudonym so it lands on the same partition as the device's
    down-tunnel traffic and one fleet process hosts both.
    """

    KIND: ClassVar[str] = "device.actions"
    device_id: str = field(metadata=_range(max_len=128))
    events: list[BehaviourEvent] = field(metadata=_range(max_len=100_000))
    day: int = field(default=0, metadata=_range(0, 2**31))


@dataclass(frozen=True, slots=True)
class DevicePast(Record):
    """What the user did before the replay reached the device: it builds the behaviour history
    (the sequence features) only — no samples, no scores, nothing sent up (the cloud has it)."""

    KIND: ClassVar[str] = "device.past"
    device_id: str = field(metadata=_range(max_len=128))
    events: list[BehaviourEvent] = field(metadata=_range(max_len=100_000))


@dataclass(frozen=True, slots=True)
class SampleRecord(Record):
    """Wire form of `core.sample.Sample`."""

    KIND: ClassVar[str] = "sample"
    sample_id: str = field(metadata=_range(max_len=64))
    user: str = field(metadata=_range(max_len=64))
    ts: int = field(metadata=_range(0, 2**40))
    item: int = field(metadata=_range(0, 2**31))
    tags: list[int] = field(metadata=_range(0, 2**31, 64))
    seq: list[int] = field(metadata=_range(0, 2**31, 1000))
    seq_tags: list[list[int]] = field(metadata=_range(0, 2**31, 1000))
    profile: list[int] = field(metadata=_range(0, 2**31, 64))
    label: int = field(metadata=_range(0, 1))

    @classmethod
    def of(cls, s: Sample) -> SampleRecord:
        return cls(s.sample_id, s.user, s.ts, s.item, list(s.tags), list(s.seq),
                   list(map(list, s.seq_tags)), list(s.profile), s.label)

    def to_sample(self) -> Sample:
        return Sample(self.sample_id, self.user, self.ts, self.item, tuple(self.tags),
                      tuple(self.seq), tuple(map(tuple, self.seq_tags)),
                      tuple(self.profile), self.label)


@dataclass(frozen=True, slots=True)
class SampleSet(Record):
    """Samples of one user as columns, their behaviour sequences windows of one shared timeline.

    A user's consecutive samples share all but the newest behaviours of their sequences, so
    sample i's sequence is `timeline[seq_from[i]:seq_to[i]]` (tags alike): ~70 instead of
    ~240 bytes a sample, and decoding checks a few long int lists instead of ~25 short ones
    per sample. `of` and `to_samples` round-trip any samples exactly.
    """

    KIND: ClassVar[str] = "sample.set"
    timeline: list[int] = field(metadata=_range(0, 2**31, 10_000_000))
    timeline_tags: list[list[int]] = field(metadata=_range(0, 2**31, 10_000_000))
    ids: list[str] = field(metadata=_range(max_len=100_000))
    ts: list[int] = field(metadata=_range(0, 2**40, 100_000))
    items: list[int] = field(metadata=_range(0, 2**31, 100_000))
    tags: list[list[int]] = field(metadata=_range(0, 2**31, 100_000))
    profiles: list[list[int]] = field(metadata=_range(0, 2**31, 100_000))
    labels: list[int] = field(metadata=_range(0, 1, 100_000))
    seq_from: list[int] = field(metadata=_range(0, 2**31, 100_000))
    seq_to: list[int] = field(metadata=_range(0, 2**31, 100_000))

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


@dataclass(frozen=True, slots=True)
class SampleBatchV1(Record):
    """Samples of one pseudonymous user, one full record each (v1: read from older logs only)."""

    KIND: ClassVar[str] = "sample.batch"
    user: str = field(metadata=_range(max_len=64))
    device: str = field(metadata=_range(max_len=64))
    samples: list[SampleRecord] = field(metadata=_range(max_len=100_000))

    def to_samples(self) -> list[Sample]:
        return [r.to_sample() for r in self.samples]


@dataclass(frozen=True, slots=True)
class SampleBatch(Record):
    """Samples of one pseudonymous user, in event-time order, produced by ingest."""

    KIND: ClassVar[str] = "sample.batch"
    VERSION: ClassVar[int] = 2
    user: str = field(metadata=_range(max_len=64))
    device: str = field(metadata=_range(max_len=64))
    samples: SampleSet

    @classmethod
    def of(cls, user: str, device: str, samples: Sequence[Sample]) -> SampleBatch:
        if any(x.user != user for x in samples):
            raise ValueError(f"a SampleBatch of {user!r} holds only that user's samples")
        return cls(user, device, SampleSet.of(samples))

    def to_samples(self) -> list[Sample]:
        return self.samples.to_samples(self.user)


@dataclass(frozen=True, slots=True)
class DayEnd(Record):
    """Control: event-time day `day` is complete on this partition (end-of-day work may run)."""

    KIND: ClassVar[str] = "control.day_end"
    day: int = field(metadata=_range(0, 2**31))


@dataclass(frozen=True, slots=True)
class UserVector(Record):
    """Algorithm 1: the mean user feature, published to a compacted topic keyed by user."""

    KIND: ClassVar[str] = "user.vector"
    user: str = field(metadata=_range(max_len=64))
    vector: list[float] = field(metadata=_range(max_len=4096))
    count: int = field(metadata=_range(0, 2**40))
    last_ts: int = field(metadata=_range(0, 2**40))


@dataclass(frozen=True, slots=True)
class MatchRequest(Record):
    """Ask the match agent for a user's neighbours; `capacity` samples may still be delivered."""

    KIND: ClassVar[str] = "match.request"
    request_id: str = field(metadata=_range(max_len=64))
    user: str = field(metadata=_range(max_len=64))
    device: str = field(metadata=_range(max_len=64))
    day: int = field(metadata=_range(0, 2**31))
    capacity: int = field(metadata=_range(0, 100_000))
    reason: str = field(default="pull", metadata=_range(max_len=16))


@dataclass(frozen=True, slots=True)
class MatchResult(Record):
    """KNN result of a user on an event-time day (kept for the match window)."""

    KIND: ClassVar[str] = "match.result"
    user: str = field(metadata=_range(max_len=64))
    day: int = field(metadata=_range(0, 2**31))
    neighbours: list[str] = field(metadata=_range(max_len=10_000))
    scores: list[float] = field(metadata=_range(-2.0, 2.0, 10_000))
    asof_day: int = field(default=0, metadata=_range(0, 2**31))  # last event-time day of data used


@dataclass(frozen=True, slots=True)
class NeighbourQuery(Record):
    """Scatter: ask the partition owning `neighbours` for their most recent samples."""

    KIND: ClassVar[str] = "neighbour.query"
    request_id: str = field(metadata=_range(max_len=64))
    device: str = field(metadata=_range(max_len=64))
    user: str = field(metadata=_range(max_len=64))
    day: int = field(metadata=_range(0, 2**31))
    since_ts: int = field(metadata=_range(0, 2**40))
    want: int = field(metadata=_range(0, 100_000))
    neighbours: list[str] = field(metadata=_range(max_len=10_000))
    parts: int = field(default=1, metadata=_range(1, 100_000))  # queries in this scatter
    part: int = field(default=0, metadata=_range(0, 100_000))  # this query's index
    ranks: list[int] = field(default_factory=list, metadata=_range(0, 100_000, 10_000))  # KNN rank


@dataclass(frozen=True, slots=True)
class NeighbourSamples(Record):
    """Gather: one partition's answer to a scatter, keyed by the target device."""

    KIND: ClassVar[str] = "neighbour.samples"
    request_id: str = field(metadata=_range(max_len=64))
    device: str = field(metadata=_range(max_len=64))
    user: str = field(metadata=_range(max_len=64))
    day: int = field(metadata=_range(0, 2**31))
    parts: int = field(metadata=_range(1, 100_000))
    samples: list[SampleRecord] = field(metadata=_range(max_len=1_000_000))
    part: int = field(default=0, metadata=_range(0, 100_000))
    neighbours: list[str] = field(default_factory=list, metadata=_range(max_len=10_000))
    ranks: list[int] = field(default_factory=list, metadata=_range(0, 100_000, 10_000))


@dataclass(frozen=True, slots=True)
class DevicePull(Record):
    """A desensitized pull request on the device's gather partition."""

    KIND: ClassVar[str] = "gather.pull"
    request_id: str = field(metadata=_range(max_len=64))
    device: str = field(metadata=_range(max_len=64))
    user: str = field(metadata=_range(max_len=64))
    day: int = field(metadata=_range(0, 2**31))
    max_batches: int = field(metadata=_range(1, 1000))


@dataclass(frozen=True, slots=True)
class DownBatch(Record):
    """Down-tunnel: one batch of matched samples for one device, payload zlib(msgpack)."""

    KIND: ClassVar[str] = "down.batch"
    device: str = field(metadata=_range(max_len=64))
    batch_id: str = field(metadata=_range(max_len=64))
    request_id: str = field(metadata=_range(max_len=64))
    day: int = field(metadata=_range(0, 2**31))
    n_samples: int = field(metadata=_range(0, 100_000))
    payload: bytes = field(metadata=_range(max_len=10_000_000))
    model_version: str = field(default="", metadata=_range(max_len=64))
    of: int = field(default=1, metadata=_range(1, 1000))  # batches answering this request


@dataclass(frozen=True, slots=True)
class DownNotice(Record):
    """Down-tunnel: nothing more for this device today (`reason`); the device may train now."""

    KIND: ClassVar[str] = "down.notice"
    device: str = field(metadata=_range(max_len=64))
    request_id: str = field(metadata=_range(max_len=64))
    day: int = field(metadata=_range(0, 2**31))
    reason: str = field(metadata=_range(max_len=64))
    batches_today: int = field(default=0, metadata=_range(0, 1000))


@dataclass(frozen=True, slots=True)
class BatchRecord(Record):
    """Audit log of a delivered batch: who got which sample ids from whom (ids, not copies)."""

    KIND: ClassVar[str] = "batch.log"
    device: str = field(metadata=_range(max_len=64))
    user: str = field(metadata=_range(max_len=64))
    day: int = field(metadata=_range(0, 2**31))
    batch_id: str = field(metadata=_range(max_len=64))
    request_id: str = field(metadata=_range(max_len=64))
    sample_ids: list[str] = field(metadata=_range(max_len=1000))
    sample_owners: list[str] = field(metadata=_range(max_len=1000))
    bytes: int = field(metadata=_range(0, 2**31))


@dataclass(frozen=True, slots=True)
class GlobalModel(Record):
    """The cloud's global DIN, delivered to devices as their initial model."""

    KIND: ClassVar[str] = "model.global"
    version: str = field(metadata=_range(max_len=64))
    created_ts: int = field(metadata=_range(0, 2**40))
    weights: bytes = field(metadata=_range(max_len=100_000_000))
    space: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeadLetter(Record):
    """A message that could not be processed, with where it came from and why."""

    KIND: ClassVar[str] = "dead.letter"
    raw: bytes = field(metadata=_range(max_len=100_000_000))
    reason: str = field(metadata=_range(max_len=64))
    detail: str = field(metadata=_range(max_len=4096))
    topic: str = field(metadata=_range(max_len=256))
    partition: int = field(metadata=_range(-1, 2**31))
    offset: int = field(metadata=_range(-1, 2**62))
    stage: str = field(default="", metadata=_range(max_len=64))


# --------------------------------------------------------------------------- state
# Table values travel on Faust changelog topics: they are wire messages too.
@dataclass(frozen=True, slots=True)
class HistoryState(Record):
    """Ingest: a user's recent behaviour (hashed) and the ids of recently emitted samples."""

    KIND: ClassVar[str] = "state.history"
    items: list[int] = field(default_factory=list)
    tags: list[list[int]] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class UserStateV1(Record):
    """User-vector agent, v1: its in-window samples inside the state (read by old changelogs only).

    Every sample batch re-encoded all of them into the changelog: the ingest bottleneck.
    """

    KIND: ClassVar[str] = "state.user"
    count: int
    total: list[float]
    last_ts: int
    counted_ids: list[str]
    counted_ts: list[int]
    recent: list[SampleRecord]
    device: str = ""


@dataclass(frozen=True, slots=True)
class UserState(Record):
    """User-vector agent: count, feature sum and counted sample ids (samples: `RecentSamples`)."""

    KIND: ClassVar[str] = "state.user"
    VERSION: ClassVar[int] = 2
    count: int
    total: list[float]
    last_ts: int
    counted_ids: list[str]
    counted_ts: list[int]
    device: str = ""


@dataclass(frozen=True, slots=True)
class RecentSamples(Record):
    """User-vector agent: one user's in-window samples of one event-time day, oldest first.

    One table key per (user, day), so a batch rewrites only the days it touched.
    """

    KIND: ClassVar[str] = "state.recent"
    samples: SampleSet


@dataclass(frozen=True, slots=True)
class IdList(Record):
    """A list of sample ids (served-to-device sets, etc.)."""

    KIND: ClassVar[str] = "state.ids"
    ids: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    reqs: list[str] = field(default_factory=list)  # the request that took each id (served sets)


@dataclass(frozen=True, slots=True)
class MatchCache(Record):
    """Match agent: a user's neighbours per event-time day, kept for the match window."""

    KIND: ClassVar[str] = "state.matches"
    days: list[int] = field(default_factory=list)
    neighbours: list[list[str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PendingGather(Record):
    KIND: ClassVar[str] = "state.pending"
    request_id: str
    day: int
    parts: int
    got: list[int]
    neighbours: list[str]
    samples: list[SampleRecord]
    ranks: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DeviceState(Record):
    """Assemble agent: the device's user, today's quota, sent ids (with ts) and open gathers."""

    KIND: ClassVar[str] = "state.device"
    user: str = ""
    day: int = -1
    used: int = 0
    sent_ids: list[str] = field(default_factory=list)
    sent_ts: list[int] = field(default_factory=list)
    pending: list[PendingGather] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # recently answered request ids: a redelivered pull is a no-op


REGISTRY: dict[tuple[str, int], type[Record]] = {
    (cls.KIND, cls.VERSION): cls
    for cls in (
        BehaviourEvent, UpEnvelope, PullRequest, DeviceActions, DevicePast, SampleRecord, SampleSet, SampleBatchV1, SampleBatch,
        DayEnd, UserVector,
        MatchRequest, MatchResult, NeighbourQuery, NeighbourSamples, DevicePull, DownBatch,
        DownNotice, BatchRecord, GlobalModel, DeadLetter, HistoryState, UserStateV1, UserState,
        RecentSamples, IdList, MatchCache, PendingGather, DeviceState,
    )
}
# Named unions for topics that carry more than one kind (topics.yaml `value`).
UNIONS: dict[str, tuple[type[Record], ...]] = {
    "UpMessage": (UpEnvelope, PullRequest),
    "SampleMessage": (SampleBatch, SampleBatchV1, DayEnd),
    "GatherMessage": (DevicePull, NeighbourSamples),
    "DownMessage": (DownBatch, DownNotice),
    "ActionMessage": (DeviceActions, DevicePast, DayEnd),
}
SCHEMAS: dict[str, tuple[type[Record], ...]] = {
    **{cls.__name__: (cls,) for cls in REGISTRY.values()},
    **UNIONS,
}

R = TypeVar("R", bound=Record)


# --------------------------------------------------------------------------- encode
def to_plain(record: Record) -> dict[str, Any]:
    body: dict[str, Any] = {KIND_KEY: record.KIND, VERSION_KEY: record.VERSION}
    body.update(_record_encoder(type(record))(record))
    return body


@functools.cache
def _record_encoder(cls: type[Record]) -> Callable[[Any], dict[str, Any]]:
    """Compile an encoder once per class: scalars and scalar lists pass through untouched."""
    hints = typing.get_type_hints(cls)
    plan = [(f.name, _value_encoder(hints[f.name])) for f in fields(cls)]
    return lambda record: {name: (enc(v) if enc is not None and v is not None else v)
                           for name, enc in plan for v in (getattr(record, name),)}


def _value_encoder(hint: Any) -> Callable[[Any], Any] | None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return _value_encoder([a for a in args if a is not type(None)][0])
    if isinstance(hint, type) and issubclass(hint, Record):
        return _record_encoder(hint)
    if origin is list:
        inner = _value_encoder(args[0])
        return None if inner is None else (lambda items: [inner(x) for x in items])
    return None  # scalars, maps of scalars and lists of them: msgpack takes them as they are


def encode(record: Record) -> bytes:
    return msgpack.packb(to_plain(record), use_bin_type=True)


# --------------------------------------------------------------------------- decode
def decode(raw: bytes, max_bytes: int = DEFAULT_MAX_BYTES, expect: tuple[type[Record], ...] = ()) -> Record:
    """Bytes → validated record, or `SchemaError` naming what is wrong."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise SchemaError("not_bytes", f"expected bytes, got {type(raw).__name__}")
    if len(raw) > max_bytes:
        raise SchemaError("oversize", f"message is {len(raw)} bytes, limit {max_bytes}")
    try:
        body = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise SchemaError("bad_msgpack", f"{type(exc).__name__}: {exc}") from None
    if not isinstance(body, dict):
        raise SchemaError("not_a_map", f"top level is {type(body).__name__}")
    kind, version = body.get(KIND_KEY), body.get(VERSION_KEY)
    cls = REGISTRY.get((kind, version)) if isinstance(kind, str) and isinstance(version, int) else None
    if cls is None:
        known = sorted(v for k, v in REGISTRY if k == kind)
        reason = "unknown_version" if known else "unknown_kind"
        raise SchemaError(reason, f"kind={kind!r} version={version!r} (known versions: {known})")
    if expect and cls not in expect:
        names = ", ".join(c.KIND for c in expect)
        raise SchemaError("unexpected_kind", f"{cls.KIND!r} where {names} expected")
    return from_plain(cls, body, "")


def decode_as(cls: type[R], raw: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> R:
    record = decode(raw, max_bytes, (cls,))
    assert isinstance(record, cls)
    return record


def from_plain(cls: type[R], body: Any, path: str) -> R:
    return _record_checker(cls)(body, path or cls.KIND)  # type: ignore[no-any-return]


Checker = Callable[[Any, str], Any]


@functools.cache
def _record_checker(cls: type[Record]) -> Checker:
    """Compile a validator once per record class: decoding is on every agent's hot path."""
    hints = typing.get_type_hints(cls)
    plan = []
    for f in fields(cls):
        required = f.default is MISSING and f.default_factory is MISSING  # type: ignore[misc]
        meta = dict(f.metadata) if f.metadata else {}
        plan.append((f.name, required, _optional(hints[f.name]), _compile(hints[f.name], meta)))

    def check(body: Any, path: str) -> Any:
        if not isinstance(body, dict):
            raise SchemaError("wrong_type", f"{path}: expected a map, got {type(body).__name__}")
        values: dict[str, Any] = {}
        for name, required, optional, checker in plan:
            value = body.get(name)
            where = f"{path}.{name}" if path != cls.KIND else name
            if value is None:
                if required:
                    raise SchemaError("missing_field", f"{where} is required")
                if optional and name in body:
                    values[name] = None
                continue
            values[name] = checker(value, where)
        return cls(**values)

    return check


def _optional(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


def _compile(hint: Any, meta: dict[str, Any]) -> Checker:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return _compile([a for a in args if a is not type(None)][0], meta)
    if origin is list:
        return _list_checker(args[0], meta)
    if origin is dict:
        key = _compile(args[0], {})
        val = profile_value if meta.get("profile") else _compile(args[1], {})

        plain = args == (str, str)  # unbounded strs: the types are all there is to check

        def check_map(value: Any, where: str) -> Any:
            if not isinstance(value, dict) or len(value) > 64:
                raise SchemaError("wrong_type", f"{where}: expected a map of at most 64 entries")
            if plain and set(map(type, value)) | set(map(type, value.values())) <= {str}:
                return value  # fast path, no per-entry paths built; else the loop names the entry
            return {key(k, f"{where}.key"): val(v, f"{where}[{k!r}]") for k, v in value.items()}

        return check_map
    if isinstance(hint, type) and issubclass(hint, Record):
        return _record_checker(hint)
    return _scalar_checker(hint, meta)


def _scalar_checker(hint: Any, meta: dict[str, Any]) -> Checker:
    """Plain in-range ints and short-enough strs pass in one test; anything else takes `_scalar`."""
    slow = functools.partial(_scalar, hint, meta=meta)
    lo, hi, max_len = meta.get("lo"), meta.get("hi"), meta.get("max_len")
    if hint is int:
        lo_, hi_ = -math.inf if lo is None else lo, math.inf if hi is None else hi
        return lambda value, where: (value if type(value) is int and lo_ <= value <= hi_
                                     else slow(value, where))
    if hint is str:
        longest = math.inf if max_len is None else max_len
        return lambda value, where: (value if type(value) is str and len(value) <= longest
                                     else slow(value, where))
    return slow


def _list_checker(item: Any, meta: dict[str, Any]) -> Checker:
    max_len = meta.get("max_len")
    inner = _compile(item, {**meta, "max_len": None})
    fast = _fast_scalars(item, meta)

    def check_list(value: Any, where: str) -> Any:
        if not isinstance(value, list):
            raise SchemaError("wrong_type", f"{where}: expected a list, got {type(value).__name__}")
        if max_len is not None and len(value) > max_len:
            raise SchemaError("out_of_range", f"{where}: {len(value)} items, at most {max_len}")
        if fast is not None and fast(value):
            return value
        return [inner(v, f"{where}[{i}]") for i, v in enumerate(value)]

    return check_list


def _scalar(hint: Any, value: Any, where: str, meta: dict[str, Any]) -> Any:
    if hint is bool or (hint is int and isinstance(value, bool)):
        raise SchemaError("wrong_type", f"{where}: expected {hint.__name__}, got bool")
    if hint is float and isinstance(value, int):
        value = float(value)
    accepted = (bytes, bytearray) if hint is bytes else hint
    if not isinstance(value, accepted):
        raise SchemaError("wrong_type", f"{where}: expected {hint.__name__}, got {type(value).__name__}")
    if hint is float and not math.isfinite(value):
        raise SchemaError("not_finite", f"{where}: {value!r} is not a finite number")
    lo, hi, max_len = meta.get("lo"), meta.get("hi"), meta.get("max_len")
    if hint in (int, float) and ((lo is not None and value < lo) or (hi is not None and value > hi)):
        raise SchemaError("out_of_range", f"{where}: {value!r} outside [{lo}, {hi}]")
    if hint in (str, bytes) and max_len is not None and len(value) > max_len:
        raise SchemaError("out_of_range", f"{where}: length {len(value)} exceeds {max_len}")
    return bytes(value) if hint is bytes else value


def _fast_scalars(item: Any, meta: dict[str, Any]) -> Callable[[list[Any]], bool] | None:
    """A whole-list check for lists of plain ints, strs or floats, or lists of int lists.

    `set(map(type, v))` runs in C: on the hot path it is several times faster than a
    generator over the items. On failure the slow path names the item.
    """
    lo, hi = meta.get("lo"), meta.get("hi")
    if item is int:
        return lambda v: not v or (set(map(type, v)) == {int} and (lo is None or min(v) >= lo)
                                   and (hi is None or max(v) <= hi))
    if item is str:
        return lambda v: not v or set(map(type, v)) == {str}
    if item is float:
        return lambda v: not v or (set(map(type, v)) == {float} and all(map(math.isfinite, v))
                                   and (lo is None or min(v) >= lo) and (hi is None or max(v) <= hi))
    if typing.get_origin(item) is list and typing.get_args(item) == (int,):
        ints = _fast_scalars(int, meta)  # the inner lists carry no length limit of their own
        assert ints is not None
        return lambda v: not v or (set(map(type, v)) == {list}
                                   and ints(list(itertools.chain.from_iterable(v))))
    return None


# --------------------------------------------------------------------------- payloads
def pack_samples(samples: list[Sample]) -> bytes:
    """Compressed down-tunnel payload (paper: zlib, ~90% smaller than raw)."""
    rows = [[s.sample_id, s.ts, s.item, list(s.tags), list(s.seq), [list(t) for t in s.seq_tags],
             list(s.profile), s.label] for s in samples]
    return zlib.compress(msgpack.packb(rows, use_bin_type=True), 6)


def unpack_samples(payload: bytes, max_bytes: int = 10_000_000) -> list[Sample]:
    """Inverse of `pack_samples`; owners are not on the wire, so `user` is empty."""
    try:
        inflater = zlib.decompressobj()
        data = inflater.decompress(payload, max_bytes)
        if inflater.unconsumed_tail:
            raise SchemaError("oversize", f"payload inflates beyond {max_bytes} bytes")
        rows = msgpack.unpackb(data, raw=False)
    except SchemaError:
        raise
    except Exception as exc:
        raise SchemaError("bad_payload", f"{type(exc).__name__}: {exc}") from None
    if not isinstance(rows, list):
        raise SchemaError("bad_payload", "payload is not a list of samples")
    if _rows_valid(rows):
        return [Sample(sid, "", ts, item, tuple(tags), tuple(seq), tuple(map(tuple, seq_tags)), tuple(profile), label)
                for sid, ts, item, tags, seq, seq_tags, profile, label in rows]
    return _samples_row_by_row(rows)  # something is wrong: the error names the row and field


def _samples_row_by_row(rows: list[Any]) -> list[Sample]:
    out = []
    for i, row in enumerate(rows):
        try:
            sid, ts, item, tags, seq, seq_tags, profile, label = row
            rec = from_plain(SampleRecord, {"sample_id": sid, "user": "", "ts": ts, "item": item,
                                            "tags": tags, "seq": seq, "seq_tags": seq_tags,
                                            "profile": profile, "label": label}, f"payload[{i}]")
        except (TypeError, ValueError) as exc:
            if isinstance(exc, SchemaError):
                raise
            raise SchemaError("bad_payload", f"payload[{i}]: {exc}") from None
        out.append(rec.to_sample())
    return out


def _rows_valid(rows: list[Any]) -> bool:
    """Whether every payload row passes `SampleRecord`'s checks, column by column at C speed.

    A device validates every matched sample it receives; row by row that was ~50 µs a sample,
    most of a device's Python time per batch. False sends the payload down the row-by-row
    path, which names what is wrong.
    """
    if not rows:
        return True
    if set(map(type, rows)) != {list} or set(map(len, rows)) != {8}:
        return False
    sids, ts, items, tags, seqs, seq_tags, profiles, labels = zip(*rows, strict=True)
    ints, max_len = _sample_checks()
    return (ints["ts"](list(ts)) and ints["item"](list(items)) and ints["label"](list(labels))
            and set(map(type, sids)) == {str} and max(map(len, sids)) <= max_len["sample_id"]
            and all(_int_lists_valid(column, max_len[name], ints[name]) for column, name in
                    ((tags, "tags"), (seqs, "seq"), (profiles, "profile")))
            and _int_lists_valid(seq_tags, max_len["seq_tags"], None)
            and _int_lists_valid(list(itertools.chain.from_iterable(seq_tags)), None, ints["seq_tags"]))


@functools.cache
def _sample_checks() -> tuple[dict[str, Callable[[list[Any]], bool]], dict[str, int | None]]:
    """`SampleRecord`'s limits, compiled once: whole-list int checks and length limits per field."""
    meta = {f.name: dict(f.metadata) for f in fields(SampleRecord)}
    ints = {name: check for name, m in meta.items() if (check := _fast_scalars(int, m)) is not None}
    return ints, {name: m.get("max_len") for name, m in meta.items()}


def _int_lists_valid(lists: Sequence[Any], max_len: int | None,
                     ints: Callable[[list[Any]], bool] | None) -> bool:
    """Every entry a list of at most `max_len` items; with `ints`, the items pass it, all at once."""
    if set(map(type, lists)) - {list} or (max_len is not None and max(map(len, lists), default=0) > max_len):
        return False
    return ints is None or ints(list(itertools.chain.from_iterable(lists)))
