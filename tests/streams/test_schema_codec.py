"""The msgspec codec: its fast path judges exactly as its checked path; records behave as records."""

from __future__ import annotations

import pickle
from typing import Any

import msgpack
import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from streams import schemas as s
from streams.deadletterview import describe
from streams.schemas import codec
from tests.streams.golden_records import RECORDS

FUZZ = hsettings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
# any msgpack-able tree: what a broken or hostile client could put in a field
trees = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=70)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=66) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=80,
)
SMALL = sorted(name for name, build in RECORDS.items() if len(s.encode(build())) < 2_000)


def _outcome(judge: Any, raw: bytes) -> object:
    try:
        return judge(raw)
    except s.SchemaError as err:
        return err.reason


def _nested_paths(body: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a plain message a value can be swapped: map entries and list items."""
    items = body.items() if isinstance(body, dict) else enumerate(body) if isinstance(body, list) else ()
    out = []
    for key, value in items:
        out.append((*path, key))
        out += _nested_paths(value, (*path, key))
    return out


@FUZZ
@given(st.sampled_from(SMALL), st.integers(0, 10**6), trees)
def test_the_fast_path_judges_as_the_checked_path(name: str, where: int, value: object) -> None:
    """Any value anywhere: msgspec's one pass and the field-by-field path agree on record or reason."""
    body = msgpack.unpackb(s.encode(RECORDS[name]()), raw=False)
    paths = [p for p in _nested_paths(body) if p[0] not in ("k", "v")]
    if paths:
        *parents, last = paths[where % len(paths)]
        target = body
        for key in parents:
            target = target[key]
        target[last] = value
    raw = msgpack.packb(body, use_bin_type=True)
    assert _outcome(s.decode, raw) == _outcome(lambda r: codec._decode_checked(r, ()), raw)


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_to_plain_is_what_goes_on_the_wire(name: str) -> None:
    """to_plain(record) equals the unpacked bytes, and from_plain of it gives the record back."""
    record = RECORDS[name]()
    raw = s.encode(record)
    assert s.to_plain(record) == msgpack.unpackb(raw, raw=False)
    assert s.from_plain(type(record), s.to_plain(record)) == s.decode(raw)


def test_wrong_type_details_read_as_field_expected_got() -> None:
    """Dead-letter summaries parse the detail: field, expected, got."""
    body = s.to_plain(RECORDS["up.events"]())
    body["events"][0]["ts"] = "soon"
    with pytest.raises(s.SchemaError) as err:
        s.decode(msgpack.packb(body))
    assert str(err.value) == "wrong_type: events[0].ts: expected int, got str"
    assert describe(err.value.detail) == {"field": "events[0].ts", "expected": "int", "got": "str"}


def test_records_are_frozen_picklable_and_replaceable() -> None:
    """Records keep what the dataclasses gave: immutability, pickling, equality, replace."""
    event = RECORDS["event.label"]()
    with pytest.raises(AttributeError):
        event.ts = 5
    assert pickle.loads(pickle.dumps(event)) == event
    later = msgspec.structs.replace(event, ts=event.ts + 1)
    assert later != event and later.ts == event.ts + 1 and later.user_id == event.user_id
    assert [f.name for f in msgspec.structs.fields(s.DownBatch)][-2:] == ["model_version", "of"]


def test_sample_sets_check_their_columns_when_built() -> None:
    """A SampleSet built (not decoded) with ragged columns is refused at once."""
    with pytest.raises(s.SchemaError, match="inconsistent"):
        s.SampleSet([1], [[1]], ["a", "b"], [1], [1], [[1]], [[1]], [0], [0], [1])


def test_float_and_int_subclasses_encode_as_their_base_type() -> None:
    """numpy's float64 (a float subclass) goes on the wire as a plain float, as msgpack wrote it."""
    plain = s.UserVector("u", [0.5, 1.25], 2, 3)
    assert s.encode(s.UserVector("u", [np.float64(0.5), np.float64(1.25)], 2, 3)) == s.encode(plain)
    with pytest.raises(TypeError):
        s.encode(s.UserVector("u", [object()], 2, 3))  # type: ignore[list-item]


def test_a_kind_and_version_register_once() -> None:
    """A second class for a registered (kind, version) is refused."""
    class Again(s.Record):
        KIND = "control.day_end"
        day: int

    with pytest.raises(ValueError, match="DayEnd"):
        codec.register(Again)
