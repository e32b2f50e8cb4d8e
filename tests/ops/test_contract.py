"""The behaviour-event input contract: accepted shapes, and refusals that name the line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.features import FeatureSpace, profile_buckets
from ops.replay.contract import schema_table, validate_lines
from ops.replay.publish import to_event
from streams.schemas import BehaviourEvent, UpEnvelope, decode, encode

GOOD = {"user_id": "u1", "ts": 1_700_000_000, "item_id": "i1", "item_tags": ["a"], "action": "click"}


def lines(*events: object) -> list[str]:
    return [e if isinstance(e, str) else json.dumps(e) for e in events]


@pytest.mark.parametrize("value, expected", [(31, "31"), (31.0, "31"), (1.5, "1.5"), (True, "true"),
                                             (False, "false"), ("25-34", "25-34")])
def test_profile_values_of_every_scalar_type_are_accepted_as_strings(value: object, expected: str) -> None:
    """int, float and bool profile values are accepted and normalised to the string that is hashed."""
    result = validate_lines(lines({**GOOD, "profile": {"age": value}}))
    assert result.ok, result.report()
    assert result.events[0]["profile"] == {"age": expected}
    event = to_event(result.events[0])
    assert decode(encode(UpEnvelope("d", [event]))).events[0].profile == {"age": expected}  # type: ignore[attr-defined]


def test_string_profiles_keep_their_wire_bytes_and_hashes() -> None:
    """An event with string profile values encodes to the same bytes as before the contract existed."""
    raw = {**GOOD, "profile": {"age": "25-34", "city": "x"}, "label": 1}
    before = BehaviourEvent("u1", 1_700_000_000, "i1", ["a"], "click", {"age": "25-34", "city": "x"}, 1)
    checked = validate_lines(lines(raw)).events[0]
    assert encode(to_event(checked)) == encode(before)
    space = FeatureSpace()
    assert profile_buckets(to_event({**GOOD, "profile": {"age": 31}}).profile, space) == \
        profile_buckets({"age": "31"}, space)


def test_numeric_profiles_decoded_from_the_wire_become_strings() -> None:
    """A device that sends a numeric profile value is accepted by the wire schema too."""
    event = BehaviourEvent("u1", 1, "i1", ["a"], "click", {"age": 31, "vip": True})  # type: ignore[dict-item]
    decoded = decode(encode(UpEnvelope("d", [event])))
    assert decoded.events[0].profile == {"age": "31", "vip": "true"}  # type: ignore[attr-defined]


def test_unknown_field_names_the_line_and_the_nearest_known_name() -> None:
    """A typo is an error with its line number and a suggestion, not a silently empty feature."""
    bad = {k: v for k, v in GOOD.items() if k != "item_tags"} | {"item_tag": ["a"]}
    result = validate_lines(lines(GOOD, "", GOOD, bad))
    assert [str(p) for p in result.rejected] == ["line 4: unknown field item_tag — did you mean item_tags?"]
    assert result.by_reason == {"unknown_field": 1}
    assert len(result.events) == 2


def test_lenient_drops_unknown_fields_and_counts_them() -> None:
    """--lenient keeps the line, drops the unknown field and counts it."""
    result = validate_lines(lines({**GOOD, "colour": "red"}, {**GOOD, "colour": "blue"}), lenient=True)
    assert result.ok and len(result.events) == 2
    assert "colour" not in result.events[0]
    assert result.dropped == {"colour": 2}


@pytest.mark.parametrize("event, message", [
    ({k: v for k, v in GOOD.items() if k != "ts"}, "line 1: missing required field ts"),
    ({**GOOD, "user_id": None}, "line 1: missing required field user_id"),
    ({**GOOD, "ts": "yesterday"}, "line 1: ts: expected an integer (unix seconds), got string"),
    ({**GOOD, "ts": -5}, "line 1: ts: -5 outside [0, 2**40) unix seconds"),
    ({**GOOD, "label": 2}, "line 1: label: 2 is not 0 or 1"),
    ({**GOOD, "profile": {"age": [1]}}, "line 1: profile.age: expected a string, number or boolean, got array"),
    ({**GOOD, "profile": {"age": float("nan")}}, "line 1: profile.age: nan is not a finite number"),
    ({**GOOD, "item_tags": "a,b"}, "line 1: item_tags: expected a list of strings, got string"),
    ({**GOOD, "action": ""}, "line 1: action: length 0, must be 1–32"),
    ("[1, 2]", "line 1: expected a JSON object, got array"),
    ('{"user_id": ', "line 1: invalid JSON: Expecting value (column 13)"),
])
def test_refusals_name_the_line_and_the_field(event: object, message: str) -> None:
    """Missing fields, wrong types, out-of-range values and bad JSON each name their line and field."""
    result = validate_lines(lines(event))
    assert [str(p) for p in result.rejected] == [message]


def test_readme_carries_the_schema_table() -> None:
    """The README's behaviour-event table is the contract's."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert schema_table() in readme
