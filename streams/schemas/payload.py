"""Down-tunnel payloads: zlib(msgpack) sample rows, checked against `SampleRecord`'s limits."""

from __future__ import annotations

import functools
import itertools
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
import msgspec.inspect

from core.sample import Sample
from streams.schemas.codec import SchemaError, from_plain
from streams.schemas.messages import SampleRecord

IntsCheck = Callable[[list[Any]], bool]


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
    except Exception as exc:  # noqa: BLE001 - zlib and msgpack raise several unrelated types
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
def _sample_checks() -> tuple[dict[str, IntsCheck], dict[str, int]]:
    """`SampleRecord`'s limits, read from its field types once: whole-list int checks and length limits."""
    ints, max_len = {}, {}
    for f in msgspec.inspect.type_info(SampleRecord).fields:  # type: ignore[attr-defined]
        kind = f.type
        if isinstance(kind, msgspec.inspect.StrType | msgspec.inspect.ListType):
            max_len[f.name] = kind.max_length
        while isinstance(kind, msgspec.inspect.ListType):
            kind = kind.item_type
        if isinstance(kind, msgspec.inspect.IntType):
            ints[f.name] = _ints_check(kind.ge, kind.le)
    return ints, max_len


def _ints_check(lo: int | None, hi: int | None) -> IntsCheck:
    """A whole-list check: every item a plain int within [lo, hi].

    `set(map(type, v))` runs in C: on the hot path it is several times faster than a
    generator over the items.
    """
    return lambda v: not v or (set(map(type, v)) == {int} and (lo is None or min(v) >= lo)
                               and (hi is None or max(v) <= hi))


def _int_lists_valid(lists: Sequence[Any], max_len: int | None, ints: IntsCheck | None) -> bool:
    """Every entry a list of at most `max_len` items; with `ints`, the items pass it, all at once."""
    if set(map(type, lists)) - {list} or (max_len is not None and max(map(len, lists), default=0) > max_len):
        return False
    return ints is None or ints(list(itertools.chain.from_iterable(lists)))
