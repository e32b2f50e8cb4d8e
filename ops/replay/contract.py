"""The behaviour-event input contract: JSON Lines → checked events, every problem naming its line and field.

`coda validate`, `coda demo --events` and `coda replay --events` all read a file through
`validate_file`, so what is accepted, normalised or refused is decided here, once, before
anything is published. The wire limits are `streams.schemas.BehaviourEvent`'s.
"""

from __future__ import annotations

import difflib
import gzip
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.schemas import SchemaError, profile_value

MAX_ID = 128
MAX_TAGS = 64
MAX_ACTION = 32
MAX_PROFILE = 64
MAX_TS = 2**40


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    required: bool
    type: str  # as the README table shows it
    meaning: str


# The README's behaviour-event table is this list (tests keep the two in step).
FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("user_id", True, "str (an int is taken as its decimal string)", "the user (pseudonymized at ingest)"),
    FieldSpec("ts", True, "int, unix seconds (a float is floored)", "event time"),
    FieldSpec("item_id", True, "str (or int)", "the item shown or acted on"),
    FieldSpec("action", True, "str, 1–32 characters", "`impression`, `click`, `page_view`, …"),
    FieldSpec("item_tags", False, "list[str] (or ints), at most 64; default `[]`", "the item's categories"),
    FieldSpec("device_id", False, "str (or int); default `dev-<user_id>`", "the device that reports the event"),
    FieldSpec("profile", False, "map of str to str, int, float or bool; at most 64 entries",
              "personal fields; values become strings (`31`, `true`), hashed at ingest, never forwarded"),
    FieldSpec("label", False, "0, 1, `true` or `false`; default `action == \"click\"`", "click label"),
)
KNOWN = tuple(f.name for f in FIELDS)
REQUIRED = tuple(f.name for f in FIELDS if f.required)


@dataclass(frozen=True, slots=True)
class Problem:
    """Why one line of the file is refused (or, with `--lenient`, what was dropped from it)."""

    line: int
    reason: str  # invalid_json | not_an_object | unknown_field | missing_field | wrong_type | out_of_range | not_finite
    field: str
    detail: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return {"stage": "input", "line": self.line, "reason": self.reason, "field": self.field, "detail": self.detail}


@dataclass
class Validation:
    """What a file holds: the accepted events (normalised) and every refused line."""

    source: str
    lines: int = 0  # non-blank lines read
    events: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[Problem] = field(default_factory=list)  # one per refused line, in file order
    dropped: Counter[str] = field(default_factory=Counter)  # --lenient: unknown field name → lines it was on

    @property
    def ok(self) -> bool:
        return not self.rejected

    @property
    def by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(p.reason for p in self.rejected).items()))

    def summary(self) -> dict[str, Any]:
        """The `input` block of summary.json."""
        return {"file": self.source, "lines": self.lines, "accepted": len(self.events),
                "rejected": len(self.rejected), "rejected_by_reason": self.by_reason,
                "unknown_fields_dropped": dict(sorted(self.dropped.items())),
                "first_problems": [str(p) for p in self.rejected[:10]]}

    def report(self, first: int = 10) -> list[str]:
        """Human lines: counts, then the first problems with their line numbers."""
        out = [f"{self.source}: {self.lines} lines, {len(self.events)} valid events, {len(self.rejected)} invalid"]
        if self.rejected:
            out.append("  invalid by reason: " + ", ".join(f"{r} {n}" for r, n in self.by_reason.items()))
            out += [f"  {p}" for p in self.rejected[:first]]
            if len(self.rejected) > first:
                out.append(f"  … and {len(self.rejected) - first} more")
        if self.dropped:
            out.append("  unknown fields dropped (--lenient): "
                       + ", ".join(f"{k} on {n} lines" for k, n in sorted(self.dropped.items())))
        return out


class Refused(ValueError):
    """A value that breaks the contract; the checker turns it into a `Problem` for its line."""

    def __init__(self, reason: str, name: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.field = reason, name


def _type_name(value: Any) -> str:
    return "null" if value is None else {"str": "string", "dict": "object", "list": "array"}.get(
        type(value).__name__, type(value).__name__)


def _wrong(name: str, expected: str, value: Any) -> Refused:
    return Refused("wrong_type", name, f"{name}: expected {expected}, got {_type_name(value)}")


def _ident(name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _wrong(name, "a string", value)
    text = str(value)
    if not text or len(text) > MAX_ID:
        raise Refused("out_of_range", name, f"{name}: length {len(text)}, must be 1–{MAX_ID}")
    return text


def _ts(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong(name, "an integer (unix seconds)", value)
    if isinstance(value, float) and not math.isfinite(value):
        raise Refused("not_finite", name, f"{name}: {value!r} is not a finite number")
    if not 0 <= value < MAX_TS:
        raise Refused("out_of_range", name, f"{name}: {value!r} outside [0, 2**40) unix seconds")
    return int(value)


def _action(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _wrong(name, "a string", value)
    if not 1 <= len(value) <= MAX_ACTION:
        raise Refused("out_of_range", name, f"{name}: length {len(value)}, must be 1–{MAX_ACTION}")
    return value


def _tags(name: str, value: Any) -> list[str]:
    if not isinstance(value, list):
        raise _wrong(name, "a list of strings", value)
    if len(value) > MAX_TAGS:
        raise Refused("out_of_range", name, f"{name}: {len(value)} tags, at most {MAX_TAGS}")
    for i, tag in enumerate(value):
        if isinstance(tag, bool) or not isinstance(tag, str | int):
            raise _wrong(f"{name}[{i}]", "a string", tag)
    return [str(t) for t in value]


def _profile(name: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _wrong(name, "an object", value)
    if len(value) > MAX_PROFILE:
        raise Refused("out_of_range", name, f"{name}: {len(value)} entries, at most {MAX_PROFILE}")
    out = {}
    for key, v in value.items():
        where = f"{name}.{key}"
        if v is None or isinstance(v, list | dict):
            raise _wrong(where, "a string, number or boolean", v)
        try:
            out[key] = profile_value(v, where)
        except SchemaError as exc:
            raise Refused(exc.reason, where, exc.detail) from None
    return out


def _label(name: str, value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if not isinstance(value, int):
        raise _wrong(name, "0, 1, true or false", value)
    if value not in (0, 1):
        raise Refused("out_of_range", name, f"{name}: {value} is not 0 or 1")
    return value


CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "user_id": _ident, "device_id": _ident, "ts": _ts, "item_id": _ident, "action": _action,
    "item_tags": _tags, "profile": _profile, "label": _label,
}
assert set(CHECKS) == set(KNOWN)


def suggest(name: str) -> str:
    """' — did you mean item_tags?' for a near miss, else ' (known: …)'."""
    close = difflib.get_close_matches(name, KNOWN, n=1, cutoff=0.6)
    return f" — did you mean {close[0]}?" if close else f" (known fields: {', '.join(KNOWN)})"


def check_event(raw: Any, lenient: bool = False) -> tuple[dict[str, Any], list[str]]:
    """One parsed line → (normalised event, unknown fields dropped); raises `Refused` naming the field."""
    if not isinstance(raw, dict):
        raise Refused("not_an_object", "", f"expected a JSON object, got {_type_name(raw)}")
    unknown = [k for k in raw if k not in CHECKS]
    if unknown and not lenient:
        raise Refused("unknown_field", unknown[0], f"unknown field {unknown[0]}{suggest(unknown[0])}")
    event: dict[str, Any] = {}
    for name in KNOWN:
        value = raw.get(name)
        if value is None:
            if name in REQUIRED:
                raise Refused("missing_field", name, f"missing required field {name}")
            continue
        event[name] = CHECKS[name](name, value)
    event.setdefault("item_tags", [])
    return event, unknown


def validate_lines(lines: Iterable[str], source: str = "<events>", lenient: bool = False) -> Validation:
    result = Validation(source)
    for lineno, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        result.lines += 1
        try:
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as exc:
                raise Refused("invalid_json", "", f"invalid JSON: {exc.msg} (column {exc.colno})") from None
            event, dropped = check_event(raw, lenient)
        except Refused as exc:
            result.rejected.append(Problem(lineno, exc.reason, exc.field, str(exc)))
            continue
        result.events.append(event)
        result.dropped.update(dropped)
    return result


def _read(path: Path) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:  # type: ignore[operator]
        yield from fh


def validate_file(path: Path | str, lenient: bool = False) -> Validation:
    """Every line of a JSON Lines file (`.gz` too) checked; raises OSError if it cannot be read."""
    path = Path(path)
    return validate_lines(_read(path), str(path), lenient)


def schema_table() -> str:
    """The README's behaviour-event table."""
    rows = ["| field | required | type | meaning |", "|---|---|---|---|"]
    rows += [f"| `{f.name}` | {'yes' if f.required else 'no'} | {f.type} | {f.meaning} |" for f in FIELDS]
    return "\n".join(rows)
