"""Faust codec for the wire schemas: lets tables and topics carry `streams.schemas` records."""

from __future__ import annotations

from typing import Any

from faust.serializers import codecs

from streams.schemas import Record, decode, encode

CODEC_NAME = "coda"


class CodaCodec(codecs.Codec):
    """msgpack records with kind + schema version; rejects anything the schemas reject."""

    def _dumps(self, obj: Any) -> bytes:
        if not isinstance(obj, Record):
            raise TypeError(f"coda codec encodes schema records, got {type(obj).__name__}")
        return encode(obj)

    def _loads(self, s: bytes) -> Any:
        return decode(s, max_bytes=1 << 30)


def register() -> None:
    if CODEC_NAME not in codecs.codecs:
        codecs.register(CODEC_NAME, CodaCodec())


register()
