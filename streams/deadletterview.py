"""A run's dead letters made readable: counts by reason with one example, rows for dead_letters.jsonl.

streams/deadletter.py publishes a dead letter; this module reads them back for people.

The embedded broker keeps its topics in memory only, so a run exports what it dead-lettered
(and the input lines it refused) before the broker goes away.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import msgpack

from streams.schemas import DeadLetter

if TYPE_CHECKING:  # refused input lines: the input contract lives with replay, in ops/
    from ops.replay.contract import Problem

_DETAIL = re.compile(r"^(?P<field>[^:]+): expected (?P<expected>.+?), got (?P<got>[^,]+)$")


def describe(detail: str) -> dict[str, str]:
    """'events[0].profile['age']: expected str, got int' → field, expected, got (what is there)."""
    m = _DETAIL.match(detail)
    if m:
        return {"field": m["field"], "expected": m["expected"], "got": m["got"]}
    head, sep, _ = detail.partition(": ")
    return {"field": head if sep and " " not in head else ""}


def events_in(letter: DeadLetter) -> int:
    """Behaviour events a dead-lettered message carried (an envelope holds many; anything else counts 1)."""
    try:
        body = msgpack.unpackb(letter.raw, raw=False, strict_map_key=False)
    except Exception:  # noqa: BLE001 - undecodable bytes are exactly what dead letters hold
        return 1
    events = body.get("events") if isinstance(body, dict) else None
    return len(events) if isinstance(events, list) and events else 1


def rows(letters: Iterable[DeadLetter], refused: Iterable[Problem] = ()) -> Iterator[dict[str, Any]]:
    """DIR/dead_letters.jsonl: refused input lines (stage `input`, `line`), then broker dead letters."""
    for p in refused:
        yield p.to_json()
    for d in letters:
        yield {"stage": d.stage or "cloud", "reason": d.reason, **describe(d.detail), "detail": d.detail,
               "topic": d.topic, "partition": d.partition, "offset": d.offset, "events": events_in(d)}


def by_reason(letters: Sequence[DeadLetter]) -> dict[str, Any]:
    """summary.json's `dead_letters`: the total and, per reason, its count and one example."""
    out: dict[str, Any] = {}
    for d in letters:
        entry = out.setdefault(d.reason, {"count": 0, "events": 0, "example": {
            **describe(d.detail), "detail": d.detail, "where": f"{d.topic}[{d.partition}]@{d.offset}"}})
        entry["count"] += 1
        entry["events"] += events_in(d)
    return {"total": len(letters), "by_reason": dict(sorted(out.items()))}


def cause(letters: Sequence[DeadLetter], limit: int = 3) -> str:
    """The commonest details with their event counts: 'events[0].profile['age']: expected str, got int (14,089)'."""
    counts: Counter[str] = Counter()
    for d in letters:
        counts[f"{d.reason}: {d.detail}"] += events_in(d)
    return "; ".join(f"{detail} ({n:,})" for detail, n in counts.most_common(limit))


def lines(summary: dict[str, Any]) -> list[str]:
    """Terminal lines for a `by_reason` summary."""
    if not summary.get("total"):
        return []
    out = [f"dead letters: {summary['total']:,}"]
    for reason, entry in summary["by_reason"].items():
        out.append(f"  {reason}: {entry['count']:,} message(s), {entry['events']:,} event(s); "
                   f"e.g. {entry['example']['detail']} at {entry['example']['where']}")
    return out
