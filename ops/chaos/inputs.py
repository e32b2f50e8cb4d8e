"""Bad up-tunnel input (pure): `bad_message` turns a valid envelope into one invalid message, and
`expected_reason` says which dead-letter reason ingest must give it (the schema decoder is the oracle)."""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass

import msgpack

from streams.schemas import (
    DayEnd,
    SchemaError,
    UpEnvelope,
    decode,
    encode,
    to_plain,
)
from streams.settings import Settings
from streams.topics import Topics

log = logging.getLogger(__name__)


MUTATIONS = (
    "truncated", "wrong_type", "wrong_version", "unknown_kind", "other_kind", "missing_field",
    "huge_list", "long_string", "non_finite", "out_of_range", "bool_for_int", "random_bytes",
    "not_a_map", "bad_map_key", "deep_nesting", "empty", "null_value", "oversize",
)
# the cheap ones, weighted; "oversize" (> max_envelope_bytes on the wire) is added sparingly
_WEIGHTS = {m: 1.0 for m in MUTATIONS} | {"oversize": 0.0, "huge_list": 0.3, "deep_nesting": 0.3}
_EVENT_FIELDS = {"user_id": str, "ts": int, "item_id": str, "item_tags": list, "action": str,
                 "profile": dict, "label": int}
_TOP_FIELDS = {"device_id": str, "events": list, "sent_ts": int}
_WRONG = {str: [7, 2.5, [], {}, b"bytes", True], int: ["7", 2.5, [], {}, b"\x07"],
          list: ["a", 3, {"a": "b"}, b"xs"], dict: ["a", 3, ["a"], {"a": 1}, {"a": ["b"]}]}


def expected_reason(raw: bytes | None, settings: Settings, topics: Topics) -> str | None:
    """The dead-letter reason ingest gives `raw`, or None when it is a valid up-tunnel message."""
    try:
        decode(raw, settings.max_envelope_bytes, topics["up"].kinds)  # type: ignore[arg-type]
    except SchemaError as err:
        return err.reason
    return None


def mutate(envelope: UpEnvelope, rng: random.Random, kind: str, max_bytes: int) -> bytes | None:
    """One mutation of `envelope`'s wire form (may, rarely, still be valid: see `bad_message`)."""
    body = to_plain(envelope)
    raw = encode(envelope)
    events = body["events"]
    event = events[rng.randrange(len(events))] if events else None
    if kind == "truncated":
        return raw[: rng.randrange(1, len(raw))]
    if kind == "wrong_type":
        target, fields = (event, _EVENT_FIELDS) if event is not None and rng.random() < 0.7 else (body, _TOP_FIELDS)
        name = rng.choice(sorted(fields))
        target[name] = rng.choice(_WRONG[fields[name]])
    elif kind == "wrong_version":
        body["v"] = rng.choice([0, 2, 99, -1, "1", 1.0])
    elif kind == "unknown_kind":
        body["k"] = rng.choice(["up.event", "", "UP.EVENTS", 7, ["up.events"]])
    elif kind == "other_kind":
        return encode(DayEnd(rng.randrange(100)))  # a real kind that does not belong on `up`
    elif kind == "missing_field":
        if event is not None and rng.random() < 0.7:
            del event[rng.choice(["user_id", "ts", "item_id", "item_tags", "action"])]
        else:
            del body[rng.choice(["device_id", "events"])]
    elif kind == "huge_list":
        if rng.random() < 0.5 or event is None:
            body["events"] = [0] * 100_001  # over the schema's list limit (100,000)
        else:
            event["item_tags"] = [f"t{i}" for i in range(65 + rng.randrange(500))]
    elif kind == "long_string":
        target, name = (event, rng.choice(["user_id", "item_id"])) if event is not None else (body, "device_id")
        target[name] = "x" * (129 + rng.randrange(1000))
    elif kind == "non_finite":
        value = rng.choice([math.nan, math.inf, -math.inf])
        if event is not None:
            event[rng.choice(["ts", "label"])] = value
        else:
            body["sent_ts"] = value
    elif kind == "out_of_range":
        if event is not None:
            name, value = rng.choice([("ts", -1), ("ts", 2**41), ("label", 2), ("label", -1)])
            event[name] = value
        else:
            body["sent_ts"] = -5
    elif kind == "bool_for_int":
        if event is not None:
            event[rng.choice(["ts", "label"])] = rng.choice([True, False])
        else:
            body["sent_ts"] = True
    elif kind == "random_bytes":
        return rng.randbytes(rng.randrange(1, 300))
    elif kind == "not_a_map":
        return msgpack.packb(rng.choice([[1, 2, 3], "up.events", 42, None, [body]]), use_bin_type=True)
    elif kind == "bad_map_key":
        return b"\x81\x01\x02" + raw  # {1: 2} then junk: a non-string key fails strict decoding
    elif kind == "deep_nesting":
        depth = rng.choice([2_000, 200_000])  # the second exceeds msgpack's own stack limit
        head = msgpack.packb({k: v for k, v in body.items() if k != "events"}, use_bin_type=True)
        return bytes([head[0] + 1]) + head[1:] + msgpack.packb("events") + b"\x91" * depth + b"\x01"
    elif kind == "empty":
        return b""
    elif kind == "null_value":
        return None
    elif kind == "oversize":
        body["pad"] = b"\0" * (max_bytes + 1 + rng.randrange(1000))
    else:
        raise ValueError(f"unknown mutation {kind!r}")
    return msgpack.packb(body, use_bin_type=True)


@dataclass(frozen=True, slots=True)
class Injected:
    """One message the chaos run put on the up-tunnel besides the plain replay."""

    key: bytes | None
    raw: bytes | None
    category: str
    reason: str | None  # the dead-letter reason it must get; None for valid (no-op) traffic


def bad_message(envelope: UpEnvelope, rng: random.Random, settings: Settings, topics: Topics,
                kind: str | None = None) -> Injected:
    """An invalid up-tunnel message derived from `envelope`, with the reason ingest must give it."""
    for _ in range(20):
        chosen = kind or rng.choices(list(_WEIGHTS), weights=list(_WEIGHTS.values()))[0]
        raw = mutate(envelope, rng, chosen, settings.max_envelope_bytes)
        reason = expected_reason(raw, settings, topics)
        if reason is not None:
            keys = [envelope.device_id.encode(), b"fuzz", rng.randbytes(8)] + ([None] if raw is not None else [])
            key = rng.choice(keys)  # a Kafka record needs a key or a value
            return Injected(key, raw, chosen, reason)
    raise RuntimeError(f"no invalid mutation of kind {kind!r} after 20 tries")
