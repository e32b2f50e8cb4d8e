"""Bytes ↔ records: msgpack through msgspec, the kind/version envelope, errors as `SchemaError` reasons.

`encode(record) -> bytes` and `decode(raw) -> record` are the only way bytes become messages.
A message is a msgpack map whose first entries are `"k": KIND, "v": VERSION`, then the record's
fields in definition order (nested records: their fields only). The registry is keyed by
`(kind, version)`, so a new version is a new class and old decoders stay.

Decoding has two paths. The fast one: our own envelope bytes name the class and msgspec decodes
and checks the message in one pass. Anything it refuses takes the checked path, which judges the
message as before (plain msgpack, then the envelope, then the fields in definition order) and
turns msgspec's complaint into the same `SchemaError.reason` and field path.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, TypeVar

import msgpack
import msgspec
from msgspec import Meta

DEFAULT_MAX_BYTES = 1_000_000
KIND_KEY, VERSION_KEY = "k", "v"
PROFILE_TYPES = (str, int, float, bool)  # what a profile value may be; `profile_value` makes it a str

# NaN fails both bounds and ±inf one: msgspec has no finiteness check of its own
Finite = Annotated[float, Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
# a map of profile fields; `extra` marks it for the checked path, which turns its values into strings
Profile = Annotated[dict[str, str], Meta(max_length=64, extra={"profile": True})]
StrMap = Annotated[dict[str, str], Meta(max_length=64)]


class SchemaError(ValueError):
    """A message that cannot be accepted; `reason` is a short machine-friendly code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


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


class Record(msgspec.Struct, frozen=True):
    """A wire message; subclasses set `KIND` (and `VERSION` from the second version on)."""

    KIND: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1


R = TypeVar("R", bound=Record)
REGISTRY: dict[tuple[str, int], type[Record]] = {}
_BY_ENVELOPE: dict[bytes, type[Record]] = {}  # the envelope's bytes after the map header → class


def register(*classes: type[Record]) -> None:
    """Make `classes` decodable; a (kind, version) may name one class only."""
    for cls in classes:
        key = (cls.KIND, cls.VERSION)
        if key in REGISTRY:
            raise ValueError(f"{key} is already {REGISTRY[key].__name__}")
        REGISTRY[key] = cls
        _BY_ENVELOPE[_envelope(cls)] = cls


# --------------------------------------------------------------------------- encode
def _as_builtin(obj: Any) -> Any:
    """Subclasses of int, float and str (numpy's float64, enums) go on the wire as their base value."""
    for base in (bool, int, float, str):
        if isinstance(obj, base):
            return base(obj)
    raise TypeError(f"can not serialize {type(obj).__name__!r} object")


_ENCODER = msgspec.msgpack.Encoder(enc_hook=_as_builtin)


def _envelope(cls: type[Record]) -> bytes:
    return b"".join(map(_ENCODER.encode, (KIND_KEY, cls.KIND, VERSION_KEY, cls.VERSION)))


def _map_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x80 | n])
    return b"\xde" + n.to_bytes(2, "big") if n < 2**16 else b"\xdf" + n.to_bytes(4, "big")


@functools.cache
def _head(cls: type[Record]) -> tuple[bytes, int]:
    """The bytes before a record's first field, and the length of msgspec's own map header they replace."""
    n = len(cls.__struct_fields__)
    return _map_header(n + 2) + _envelope(cls), len(_map_header(n))


def encode(record: Record) -> bytes:
    """msgspec writes the fields; the map header is swapped for one that also counts the envelope."""
    body = _ENCODER.encode(record)
    head, skip = _head(type(record))
    return b"".join((head, memoryview(body)[skip:]))


def to_plain(record: Record) -> dict[str, Any]:
    """The message as plain Python values, envelope included (what `decode` reads)."""
    body = msgspec.to_builtins(record, builtin_types=(bytes, bytearray, memoryview), enc_hook=_as_builtin)
    return {KIND_KEY: record.KIND, VERSION_KEY: record.VERSION, **body}


# --------------------------------------------------------------------------- decode
def decode(raw: bytes, max_bytes: int = DEFAULT_MAX_BYTES, expect: tuple[type[Record], ...] = ()) -> Record:
    """Bytes → validated record, or `SchemaError` naming what is wrong."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise SchemaError("not_bytes", f"expected bytes, got {type(raw).__name__}")
    if len(raw) > max_bytes:
        raise SchemaError("oversize", f"message is {len(raw)} bytes, limit {max_bytes}")
    cls = _named_class(raw)
    if cls is not None and (not expect or cls in expect):
        # msgspec's errors, bad UTF-8, deep nesting: whatever it refuses, the checked path judges
        with contextlib.suppress(Exception):
            return _decoder(cls).decode(raw)  # type: ignore[no-any-return]
    return _decode_checked(raw, expect)


def decode_as(cls: type[R], raw: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> R:
    record = decode(raw, max_bytes, (cls,))
    assert isinstance(record, cls)
    return record


def _named_class(raw: bytes | bytearray | memoryview) -> type[Record] | None:
    """The class our own envelope names: a map header, "k", a short kind, "v", a small version."""
    if raw[1:3] != b"\xa1k" or len(raw) < 8 or not 0xA0 <= raw[3] <= 0xBF:
        return None
    return _BY_ENVELOPE.get(bytes(raw[1:7 + raw[3] - 0xA0]))


@functools.cache
def _decoder(cls: type[Record]) -> msgspec.msgpack.Decoder[Any]:
    return msgspec.msgpack.Decoder(cls)


def _decode_checked(raw: bytes | bytearray | memoryview, expect: tuple[type[Record], ...]) -> Record:
    """The slow path, in the order the checks always ran: msgpack, map, kind and version, fields."""
    try:
        body = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except Exception as exc:  # noqa: BLE001 - msgpack raises several unrelated types
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


def from_plain(cls: type[R], body: Any, path: str = "") -> R:
    """Plain values (as msgpack gives them) → a checked record; `path` prefixes the field names in errors."""
    try:
        return msgspec.convert(_prepared(cls, body), cls, builtin_types=(bytes, bytearray))
    except msgspec.ValidationError as err:
        raise _schema_error(err, path) from None


# --------------------------------------------------------------------------- the checked path
class _NotFinite:
    """Stands in for a NaN or infinite float, so msgspec's complaint says which it was."""


def _prepared(hint: Any, value: Any) -> Any:
    """`value` as msgspec should judge it to give the reasons of the field-by-field checks.

    Fields come in definition order, up to the first required one missing or nil (msgspec
    reports that after the fields before it); a nil where a default exists means the default;
    profile values become strings; a bool for a float is 0.0 or 1.0; non-finite floats become `_NotFinite`.
    """
    hint, profile = _unwrapped(hint)
    if isinstance(hint, type) and issubclass(hint, msgspec.Struct) and isinstance(value, dict):
        return _prepared_fields(hint, value)
    if typing.get_origin(hint) is list and isinstance(value, list):
        item = typing.get_args(hint)[0]
        return [_prepared(item, v) for v in value] if _needs_preparing(item) else value
    if profile and isinstance(value, dict):
        return {k: _profile_text(v) for k, v in value.items()}
    if hint is float and isinstance(value, bool):
        return float(value)  # the field checks always took a bool as 0.0 or 1.0 (msgspec refuses it)
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        return _NotFinite()
    return value


def _prepared_fields(cls: type[msgspec.Struct], body: dict[Any, Any]) -> dict[str, Any]:
    out = {}
    for f in msgspec.structs.fields(cls):
        value = body.get(f.name)
        if value is None:
            if f.required:
                break  # reported as missing, after the fields before it
            if f.name in body and _accepts_none(f.type):
                out[f.name] = None
            continue
        out[f.name] = _prepared(f.type, value)
    return out


def _profile_text(value: Any) -> Any:
    if isinstance(value, PROFILE_TYPES):
        try:
            return profile_value(value)
        except SchemaError:
            return _NotFinite()
    return value  # msgspec names the wrong type


@functools.cache
def _needs_preparing(hint: Any) -> bool:
    hint, profile = _unwrapped(hint)
    if profile or hint is float or (isinstance(hint, type) and issubclass(hint, msgspec.Struct)):
        return True
    return typing.get_origin(hint) is list and _needs_preparing(typing.get_args(hint)[0])


def _unwrapped(hint: Any) -> tuple[Any, bool]:
    """The type under `X | None` and `Annotated[X, ...]`, and whether it is a profile map."""
    profile = False
    while True:
        origin = typing.get_origin(hint)
        if origin is Annotated:
            profile = profile or any(isinstance(m, Meta) and (m.extra or {}).get("profile")
                                     for m in hint.__metadata__)
            hint = hint.__origin__
        elif origin in (types.UnionType, typing.Union):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        else:
            return hint, profile


def _accepts_none(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


_REASONS: tuple[tuple[Callable[[str], bool], str], ...] = (
    (lambda m: m.startswith("Object missing required field"), "missing_field"),
    (lambda m: "got `_NotFinite`" in m, "not_finite"),
    (lambda m: m.startswith("Expected `object` of length"), "wrong_type"),  # an over-long map, as before
    (lambda m: " of length " in m or " >= " in m or " <= " in m, "out_of_range"),
)


def _schema_error(err: msgspec.ValidationError, prefix: str) -> SchemaError:
    """msgspec's message → the reason the field-by-field checks gave, naming the field as they did."""
    if isinstance(err.__cause__, SchemaError):
        return err.__cause__  # raised by a record's own __post_init__
    message, _, at = str(err).partition(" - at `")
    where = _where(at.removesuffix("`"), prefix)
    reason = next((r for test, r in _REASONS if test(message)), "wrong_type")
    if reason == "missing_field":
        name = message.partition("`")[2].rstrip("`")
        return SchemaError(reason, f"{where + '.' if where else ''}{name} is required")
    if reason == "not_finite":
        return SchemaError(reason, f"{where}: NaN or infinity is not a finite number")
    return SchemaError(reason, f"{where or 'message'}: {_plain_words(message)}")


# msgspec's names for msgpack types → the Python names the details always used
_TYPE_NAMES = {"array": "list", "object": "map", "null": "None"}


def _plain_words(message: str) -> str:
    """'Expected `int`, got `str`' → 'expected int, got str' (what streams/deadletterview.py parses)."""
    parts = message.split("`")
    for i in range(1, len(parts), 2):
        parts[i] = " | ".join(_TYPE_NAMES.get(name, name) for name in parts[i].split(" | "))
    text = "".join(parts)
    return text[:1].lower() + text[1:]


def _where(at: str, prefix: str) -> str:
    """msgspec's "$.events[0].ts" (or "key` in `$.profile") as the checks named it: "events[0].ts"."""
    at, key = (at.partition("` in `")[2], ".key") if at.startswith("key` in `") else (at, "")
    path = at.removeprefix("$")
    return (prefix + path if prefix else path.removeprefix(".")) + key
