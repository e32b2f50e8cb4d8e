"""Every wire message of every topic: typed msgspec records, msgpack, explicit schema versions, validation.

`encode(record) -> bytes` and `decode(raw) -> record` are the only way bytes become messages.
Each record class has a `KIND` and a `VERSION`; the registry is keyed by `(kind, version)`, so
a new version is a new class and old decoders stay. Validation errors name the field.
Wire records live in `messages`, changelog state in `state`, bytes and checks in `codec`.
"""

from __future__ import annotations

from streams.schemas.codec import (
    DEFAULT_MAX_BYTES,
    KIND_KEY,
    PROFILE_TYPES,
    REGISTRY,
    VERSION_KEY,
    Record,
    SchemaError,
    decode,
    decode_as,
    encode,
    from_plain,
    profile_value,
    to_plain,
)
from streams.schemas.messages import (
    UNIONS,
    BatchRecord,
    BehaviourEvent,
    DayEnd,
    DeadLetter,
    DeviceActions,
    DevicePast,
    DevicePull,
    DownBatch,
    DownNotice,
    GlobalModel,
    MatchRequest,
    MatchResult,
    NeighbourQuery,
    NeighbourSamples,
    PullRequest,
    SampleBatch,
                                   SampleBatchV1,
    SampleRecord,
    SampleSet,
    UpEnvelope,
    UserVector,
)
from streams.schemas.payload import _rows_valid, _samples_row_by_row, pack_samples, unpack_samples
from streams.schemas.state import (
    DeviceState,
    HistoryState,
    IdList,
    MatchCache,
    PendingGather,
    RecentSamples,
    UserState,
                                   UserStateV1,
)

# Every schema name topics.yaml may use: each record class, and the named unions.
SCHEMAS: dict[str, tuple[type[Record], ...]] = {
    **{cls.__name__: (cls,) for cls in REGISTRY.values()},
    **UNIONS,
}

__all__ = [
    "DEFAULT_MAX_BYTES", "KIND_KEY", "PROFILE_TYPES", "REGISTRY", "SCHEMAS", "UNIONS", "VERSION_KEY",
    "BatchRecord", "BehaviourEvent", "DayEnd", "DeadLetter", "DeviceActions", "DevicePast", "DevicePull",
    "DeviceState", "DownBatch", "DownNotice", "GlobalModel", "HistoryState", "IdList", "MatchCache",
    "MatchRequest", "MatchResult", "NeighbourQuery", "NeighbourSamples", "PendingGather", "PullRequest",
    "RecentSamples", "Record", "SampleBatch", "SampleBatchV1", "SampleRecord", "SampleSet", "SchemaError",
    "UpEnvelope", "UserState", "UserStateV1", "UserVector",
    "_rows_valid", "_samples_row_by_row",
    "decode", "decode_as", "encode", "from_plain", "pack_samples", "profile_value", "to_plain", "unpack_samples",
]
