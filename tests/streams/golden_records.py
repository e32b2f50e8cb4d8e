"""Golden wire fixtures: how to rebuild each record, and how each malformed input is made.

`golden_wire.json` holds the bytes the msgpack/dataclass implementation wrote for every
record below and the `SchemaError.reason` it gave every malformed input. Regenerate it only
on purpose (a wire change): `python -m tests.streams.golden_records > tests/streams/golden_wire.json`.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from streams import schemas as s

FIXTURE = Path(__file__).with_name("golden_wire.json")
BIG = 70_000  # bytes: past msgpack's bin16 limit, stored as a digest rather than as hex


def _sample(i: int = 0, seq: int = 3) -> Any:
    return s.SampleRecord(f"s{i}", f"u{i}", 1_700_000_000 + i, 4095 - i, [1, 2 + i],
                          list(range(seq)), [[j, j + 1] for j in range(seq)], [5, 2**31], i % 2)


def _event(profile: dict[str, Any] | None = None, label: int | None = None) -> Any:
    return s.BehaviourEvent("user-1", 1_700_000_000, "item-9", ["a", "b"], "click", profile, label)


def _set() -> Any:
    return s.SampleSet([7, 8, 9], [[1], [2, 3], []], ["s0", "s1"], [100, 200], [4, 2**31], [[1], []],
                       [[5], [6, 7]], [0, 1], [0, 1], [2, 3])


PROFILES: dict[str, dict[str, Any]] = {
    "str": {"age": "25-34", "city": "Zürich"},
    "int": {"age": 31, "big": 2**40, "neg": -7},
    "float": {"score": 0.5, "whole": 31.0, "tiny": 1e-300},
    "bool": {"member": True, "churned": False},
    "mixed": {"a": "x", "b": 2, "c": 2.5, "d": True},
    "empty": {},
    "wide": {f"k{i}": f"v{i}" for i in range(20)},  # map16 header
}

RECORDS: dict[str, Callable[[], Any]] = {
    "event": lambda: _event(),
    "event.label": lambda: _event(label=1),
    "event.label0": lambda: _event(label=0),
    **{f"event.profile.{k}": (lambda p=p: _event(dict(p), 0)) for k, p in PROFILES.items()},
    "event.unicode": lambda: s.BehaviourEvent("ü" * 40, 0, "x" * 32, ["é" * 64], "y" * 31),
    "event.long_strings": lambda: s.BehaviourEvent("u" * 128, 2**40, "é" * 128, ["t"] * 64, "a" * 32),
    "up.events": lambda: s.UpEnvelope("dev-1", [_event({"age": "25-34"}, 1), s.BehaviourEvent("u", 1, "i", [], "imp")], 5),
    "up.events.empty": lambda: s.UpEnvelope("dev-1", []),
    "up.events.wide": lambda: s.UpEnvelope("d", [s.BehaviourEvent("u", t, f"i{t}", [], "imp") for t in range(20)], 2**32),
    "up.pull": lambda: s.PullRequest("dev-1", "user-1", 1_700_000_000, "r1"),
    "up.pull.max": lambda: s.PullRequest("dev-1", "user-1", 0, "r" * 64, 1000),
    "device.actions": lambda: s.DeviceActions("dev-1", [_event({"age": "1"}, 0)], 19_000),
    "device.actions.default": lambda: s.DeviceActions("dev-1", []),
    "device.past": lambda: s.DevicePast("dev-1", [_event(), _event(label=1)]),
    "sample": lambda: _sample(),
    "sample.empty_lists": lambda: s.SampleRecord("s", "u", 0, 0, [], [], [], [], 0),
    "sample.set": _set,
    "sample.set.empty": lambda: s.SampleSet([], [], [], [], [], [], [], [], [], []),
    "sample.batch.v1": lambda: s.SampleBatchV1("u", "d", [_sample(0), _sample(1, 0)]),
    "sample.batch.v1.empty": lambda: s.SampleBatchV1("u", "d", []),
    "sample.batch": lambda: s.SampleBatch("u", "d", _set()),
    "control.day_end": lambda: s.DayEnd(19_000),
    "control.day_end.zero": lambda: s.DayEnd(0),
    "user.vector": lambda: s.UserVector("u", [0.25, -0.75, 0.0, -0.0, 1e300, 1e-300], 4, 100),
    "user.vector.ints": lambda: s.UserVector("u", [1, 2], 2**32 - 1, 2**40),
    "user.vector.empty": lambda: s.UserVector("u", [], 0, 0),
    "match.request": lambda: s.MatchRequest("r1", "u", "d", 19_000, 300),
    "match.request.reason": lambda: s.MatchRequest("r1", "u", "d", 19_000, 0, "rematch"),
    "match.result": lambda: s.MatchResult("u", 19_000, ["a", "b"], [0.9, -2.0]),
    "match.result.asof": lambda: s.MatchResult("u", 19_000, [], [], 18_999),
    "neighbour.query": lambda: s.NeighbourQuery("r1", "d", "u", 19_000, 0, 3, ["a"]),
    "neighbour.query.parts": lambda: s.NeighbourQuery("r1", "d", "u", 19_000, 5, 3, ["a", "b"], 2, 1, [0, 7]),
    "neighbour.samples": lambda: s.NeighbourSamples("r1", "d", "u", 19_000, 2, [_sample()]),
    "neighbour.samples.all": lambda: s.NeighbourSamples("r1", "d", "u", 19_000, 2, [], 1, ["n1"], [3]),
    "gather.pull": lambda: s.DevicePull("r1", "d", "u", 19_000, 12),
    "down.batch": lambda: s.DownBatch("d", "b1", "r1", 19_000, 1, b"\x78\x9c\x00payload"),
    "down.batch.of": lambda: s.DownBatch("d", "b1", "r1", 19_000, 0, b"", "v7", of=3),
    "down.batch.bin16": lambda: s.DownBatch("d", "b1", "r1", 19_000, 2, bytes(range(256)) * 2),
    "down.batch.bin32": lambda: s.DownBatch("d", "b1", "r1", 19_000, 3, bytes(i % 251 for i in range(BIG))),
    "down.notice": lambda: s.DownNotice("d", "r1", 19_000, "exhausted", 3),
    "down.notice.default": lambda: s.DownNotice("d", "r1", 19_000, "quota"),
    "batch.log": lambda: s.BatchRecord("d", "u", 19_000, "b1", "r1", ["s0", "s1"], ["u0", "u1"], 120),
    "model.global": lambda: s.GlobalModel("v1", 5, b"\x00weights", {"emb_dim": "3"}, {"auc": "0.7"}),
    "model.global.default": lambda: s.GlobalModel("v1", 5, b""),
    "dead.letter": lambda: s.DeadLetter(b"\xff", "bad_msgpack", "detail", "coda.up", 3, 42, "ingest"),
    "dead.letter.negative": lambda: s.DeadLetter(b"", "r", "", "t", -1, -1),
    "dead.letter.big_offset": lambda: s.DeadLetter(b"x", "r", "d" * 300, "t", 2**31, 2**62),
    "state.history": lambda: s.HistoryState([1, 2], [[3], [4, 5]], ["s0"]),
    "state.history.default": lambda: s.HistoryState(),
    "state.user.v1": lambda: s.UserStateV1(2, [0.5, 1.5], 10, ["s0"], [10], [_sample()], "d"),
    "state.user.v1.default": lambda: s.UserStateV1(0, [], 0, [], [], []),
    "state.user": lambda: s.UserState(2, [0.5, 1.5], 10, ["s0"], [10], "d"),
    "state.user.default": lambda: s.UserState(0, [], 0, [], []),
    "state.recent": lambda: s.RecentSamples(_set()),
    "state.ids": lambda: s.IdList(["a", "b"], [1, 2]),
    "state.ids.reqs": lambda: s.IdList(["a"], [1], ["r1"]),
    "state.ids.default": lambda: s.IdList(),
    "state.matches": lambda: s.MatchCache([19_000], [["n1", "n2"]]),
    "state.matches.default": lambda: s.MatchCache(),
    "state.pending": lambda: s.PendingGather("r1", 19_000, 2, [0], ["n1"], [_sample()], [4]),
    "state.pending.default": lambda: s.PendingGather("r1", 19_000, 2, [], [], []),
    "state.device": lambda: s.DeviceState("u", 19_000, 3, ["s0"], [10], [s.PendingGather("r1", 19_000, 2, [0], [], [])],
                                          ["r0"]),
    "state.device.default": lambda: s.DeviceState(),
}

# Records whose decoded form differs from the instance: profile values arrive as strings.
DECODED: dict[str, Callable[[], Any]] = {
    f"event.profile.{k}": (lambda p=p: _event({key: s.profile_value(v) for key, v in p.items()}, 0))
    for k, p in PROFILES.items()
}


# --------------------------------------------------------------------------- malformed
def _body(name: str) -> dict[str, Any]:
    """The plain map of a golden record, read back from its golden bytes (not from the schemas)."""
    return msgpack.unpackb(bytes.fromhex(golden()["records"][name]), raw=False)  # type: ignore[no-any-return]


def _with(name: str, change: Callable[[dict[str, Any]], Any]) -> bytes:
    body = _body(name)
    change(body)
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def _set_in(*path: Any) -> Callable[[dict[str, Any]], None]:
    """A change that sets body[path[0]]...[path[-2]] = path[-1]."""
    def change(body: dict[str, Any]) -> None:
        target = body
        for key in path[:-2]:
            target = target[key]
        target[path[-2]] = path[-1]
    return change


def _drop(*path: Any) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        target = body
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return change


def _up_raw() -> bytes:
    return bytes.fromhex(golden()["records"]["up.events"])


NAN, INF = math.nan, math.inf

# name → (raw bytes, decode kwargs); the fixture records the reason the decoder gave each.
MALFORMED: dict[str, Callable[[], tuple[bytes, dict[str, Any]]]] = {
    "truncated": lambda: (_up_raw()[:40], {}),
    "truncated.one_byte": lambda: (_up_raw()[:1], {}),
    "empty": lambda: (b"", {}),
    "trailing_bytes": lambda: (_up_raw() + b"\x00", {}),
    "not_msgpack": lambda: (b"\xc1\xc1 not msgpack", {}),
    "bad_utf8": lambda: (b"\x81\xa1k\xa2\xff\xfe", {}),
    "int_map_key": lambda: (b"\x81\x01\x02" + _up_raw(), {}),
    "int_map_key.only": lambda: (msgpack.packb({1: 2}), {}),
    "int_key_in_profile": lambda: (_with("up.events", _set_in("events", 0, "profile", {1: "x"})), {}),
    "int_key_in_unknown_field": lambda: (_with("up.events", _set_in("extra", {1: "x"})), {}),
    "deep_nesting": lambda: (_deep(200_000), {}),
    "deep_nesting.shallow": lambda: (_deep(2_000), {}),
    "not_a_map.list": lambda: (msgpack.packb([1, 2]), {}),
    "not_a_map.str": lambda: (msgpack.packb("up.events"), {}),
    "not_a_map.nil": lambda: (msgpack.packb(None), {}),
    "oversize": lambda: (_up_raw(), {"max_bytes": 10}),
    "unknown_kind": lambda: (_with("up.events", _set_in("k", "nope")), {}),
    "unknown_kind.int": lambda: (_with("up.events", _set_in("k", 7)), {}),
    "unknown_kind.missing": lambda: (_with("up.events", _drop("k")), {}),
    "unknown_version": lambda: (_with("up.events", _set_in("v", 99)), {}),
    "unknown_version.str": lambda: (_with("up.events", _set_in("v", "1")), {}),
    "unknown_version.float": lambda: (_with("up.events", _set_in("v", 1.0)), {}),
    "unknown_version.missing": lambda: (_with("up.events", _drop("v")), {}),
    "unknown_kind.repeated_key": lambda: (_repeat_kind(), {}),
    "unexpected_kind": lambda: (bytes.fromhex(golden()["records"]["control.day_end"]), {"expect": ["UpEnvelope"]}),
    "unexpected_kind.truncated": lambda: (bytes.fromhex(golden()["records"]["control.day_end"])[:-1],
                                          {"expect": ["UpEnvelope"]}),
    "missing_field": lambda: (_with("up.events", _drop("device_id")), {}),
    "missing_field.nested": lambda: (_with("up.events", _drop("events", 1, "action")), {}),
    "missing_field.nil": lambda: (_with("up.events", _set_in("device_id", None)), {}),
    "missing_field.nested_record": lambda: (_with("sample.batch", _drop("samples")), {}),
    "missing_field.then_wrong_type": lambda: (_with("up.events", lambda b: (b.pop("device_id"), b.update(sent_ts="x"))),
                                              {}),
    "wrong_type.str_for_int": lambda: (_with("up.events", _set_in("events", 0, "ts", "soon")), {}),
    "wrong_type.bool_for_int": lambda: (_with("up.events", _set_in("events", 0, "ts", True)), {}),
    "wrong_type.float_for_int": lambda: (_with("up.events", _set_in("sent_ts", 2.0)), {}),
    "wrong_type.nan_for_int": lambda: (_with("up.events", _set_in("events", 0, "label", NAN)), {}),
    "wrong_type.int_for_str": lambda: (_with("up.events", _set_in("device_id", 7)), {}),
    "wrong_type.bytes_for_str": lambda: (_with("up.events", _set_in("device_id", b"dev")), {}),
    "wrong_type.str_for_bytes": lambda: (_with("down.batch", _set_in("payload", "text")), {}),
    "wrong_type.str_for_list": lambda: (_with("up.events", _set_in("events", "x")), {}),
    "wrong_type.map_for_list": lambda: (_with("up.events", _set_in("events", 0, "item_tags", {"a": "b"})), {}),
    "wrong_type.list_for_record": lambda: (_with("up.events", _set_in("events", 0, [1, 2])), {}),
    "wrong_type.nil_in_list": lambda: (_with("sample", _set_in("tags", [1, None])), {}),
    "wrong_type.int_in_str_list": lambda: (_with("up.events", _set_in("events", 0, "item_tags", ["a", 3])), {}),
    "wrong_type.profile_list_value": lambda: (_with("up.events", _set_in("events", 0, "profile", {"a": ["b"]})), {}),
    "wrong_type.profile_nil_value": lambda: (_with("up.events", _set_in("events", 0, "profile", {"a": None})), {}),
    "wrong_type.profile_bytes_key": lambda: (_with("up.events", _set_in("events", 0, "profile", {b"a": "b"})), {}),
    "wrong_type.profile_not_map": lambda: (_with("up.events", _set_in("events", 0, "profile", ["a"])), {}),
    "wrong_type.map_too_long": lambda: (_with("up.events", _set_in("events", 0, "profile",
                                                                   {f"k{i}": "v" for i in range(65)})), {}),
    "wrong_type.space_too_long": lambda: (_with("model.global", _set_in("space", {f"k{i}": "v" for i in range(65)})),
                                          {}),
    "wrong_type.space_int_value": lambda: (_with("model.global", _set_in("space", {"a": 1})), {}),
    "wrong_type.ext_value": lambda: (_with("up.events", _set_in("device_id", msgpack.ExtType(5, b"x"))), {}),
    "wrong_type.nested_int_list": lambda: (_with("sample", _set_in("seq_tags", [[1], 2])), {}),
    "wrong_type.float_list_str": lambda: (_with("user.vector", _set_in("vector", [0.5, "x"])), {}),
    "wrong_type.set_column": lambda: (_with("sample.batch", _set_in("samples", "ids", "s0")), {}),
    "out_of_range.negative_ts": lambda: (_with("up.events", _set_in("events", 0, "ts", -1)), {}),
    "out_of_range.big_ts": lambda: (_with("up.events", _set_in("events", 0, "ts", 2**41)), {}),
    "out_of_range.label": lambda: (_with("up.events", _set_in("events", 0, "label", 7)), {}),
    "out_of_range.max_batches": lambda: (_with("up.pull", _set_in("max_batches", 0)), {}),
    "out_of_range.long_str": lambda: (_with("up.events", _set_in("device_id", "x" * 129)), {}),
    "out_of_range.long_unicode": lambda: (_with("up.events", _set_in("device_id", "é" * 129)), {}),
    "out_of_range.long_list": lambda: (_with("up.events", _set_in("events", 0, "item_tags", ["t"] * 65)), {}),
    "out_of_range.list_item": lambda: (_with("sample", _set_in("tags", [1, 2**31 + 1])), {}),
    "out_of_range.nested_list_item": lambda: (_with("sample", _set_in("seq_tags", [[1], [-1]])), {}),
    "out_of_range.score": lambda: (_with("match.result", _set_in("scores", [0.5, 2.5])), {}),
    "out_of_range.set_id": lambda: (_with("sample.batch", _set_in("samples", "ids", ["s" * 65, "s1"])), {}),
    "out_of_range.set_window": lambda: (_with("sample.batch", lambda b: b["samples"].update(
        timeline=list(range(1001)), timeline_tags=[[]] * 1001, seq_to=[1001, 3])), {}),
    "out_of_range.offset": lambda: (_with("dead.letter", _set_in("offset", -2)), {}),
    "not_finite.vector_nan": lambda: (_with("user.vector", _set_in("vector", [0.1, NAN])), {}),
    "not_finite.vector_inf": lambda: (_with("user.vector", _set_in("vector", [INF])), {}),
    "not_finite.total_neg_inf": lambda: (_with("state.user", _set_in("total", [0.5, -INF])), {}),
    "not_finite.score_nan": lambda: (_with("match.result", _set_in("scores", [NAN, 0.5])), {}),
    "not_finite.score_inf": lambda: (_with("match.result", _set_in("scores", [INF])), {}),
    "not_finite.profile": lambda: (_with("up.events", _set_in("events", 0, "profile", {"a": NAN})), {}),
    "inconsistent.columns": lambda: (_with("sample.batch", lambda b: b["samples"]["ts"].pop()), {}),
    "inconsistent.window": lambda: (_with("sample.batch", lambda b: b["samples"]["seq_to"].__setitem__(0, 10**6)), {}),
    "inconsistent.timeline": lambda: (_with("sample.batch", lambda b: b["samples"]["timeline_tags"].pop()), {}),
}

# Inputs the decoder accepts although no encoder writes them; the fixture keeps the record's canonical bytes.
LENIENT: dict[str, Callable[[], bytes]] = {
    "nil_for_defaulted_field": lambda: _with("up.events", _set_in("sent_ts", None)),
    "nil_for_optional_field": lambda: _with("event.label", _set_in("label", None)),
    "profile_values_not_str": lambda: _with("event.profile.str", _set_in("profile", {"a": 1, "b": 2.5, "c": False})),
    "unknown_fields": lambda: _with("up.events", lambda b: b.update(extra=[1, {"x": b"y"}], pad=b"\0" * 10)),
    "fields_reordered": lambda: msgpack.packb(dict(reversed(_body("up.events").items())), use_bin_type=True),
    "int_for_float": lambda: _with("user.vector", _set_in("vector", [1, 0.5])),
    "bool_for_float": lambda: _with("match.result", _set_in("scores", [True, False])),
    "missing_defaulted_fields": lambda: _with("neighbour.query.parts", lambda b: [b.pop(k) for k in ("parts", "ranks")]),
    "kind_version_last": lambda: msgpack.packb({"day": 3, "k": "control.day_end", "v": 1}),
    "memoryview_input": lambda: bytes.fromhex(golden()["records"]["up.pull"]),
}


def _repeat_kind() -> bytes:
    """up.events with a second "k" entry, naming no kind, after the fields (the last entry wins in msgpack)."""
    raw = _up_raw()
    return bytes([raw[0] + 1]) + raw[1:] + msgpack.packb("k") + msgpack.packb("nope")


def _deep(depth: int) -> bytes:
    """A record whose `events` list is nested `depth` arrays deep."""
    head = msgpack.packb({k: v for k, v in _body("up.events").items() if k != "events"}, use_bin_type=True)
    return bytes([head[0] + 1]) + head[1:] + msgpack.packb("events") + b"\x91" * depth + b"\x01"


def expect_of(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Decode kwargs with schema names (as the fixture stores them) turned into classes."""
    out = dict(kwargs)
    if "expect" in out:
        out["expect"] = tuple(cls for name in out["expect"] for cls in s.SCHEMAS[name])
    return out


# --------------------------------------------------------------------------- the fixture
def stored(raw: bytes) -> str | dict[str, Any]:
    """Hex, or for big messages their length and digest."""
    if len(raw) < BIG:
        return raw.hex()
    return {"len": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


_GOLDEN: dict[str, Any] = {}


def golden() -> dict[str, Any]:
    if not _GOLDEN:
        _GOLDEN.update(json.loads(FIXTURE.read_text()) if FIXTURE.exists() else {"records": _record_hex()})
    return _GOLDEN


def _record_hex() -> dict[str, Any]:
    return {name: stored(s.encode(build())) for name, build in RECORDS.items()}


def _reason(raw: bytes, kwargs: dict[str, Any]) -> str | None:
    try:
        s.decode(raw, **expect_of(kwargs))
    except s.SchemaError as err:
        return err.reason
    return None


def generate() -> dict[str, Any]:
    """The fixture as the current implementation writes and judges it."""
    _GOLDEN.clear()
    _GOLDEN["records"] = _record_hex()
    malformed = {}
    for name, make in MALFORMED.items():
        raw, kwargs = make()
        malformed[name] = {"raw": stored(raw), "kwargs": kwargs, "reason": _reason(raw, kwargs)}
    lenient = {name: {"raw": make().hex(), "canonical": s.encode(s.decode(make())).hex()}
               for name, make in LENIENT.items()}
    return {"records": _GOLDEN["records"], "malformed": malformed, "lenient": lenient}


if __name__ == "__main__":
    json.dump(generate(), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
