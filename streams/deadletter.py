"""The one dead-letter helper every agent uses: raw bytes, origin and reason, plus counters."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from streams.schemas import DeadLetter, SchemaError, encode

log = logging.getLogger(__name__)

Send = Callable[..., Awaitable[object]]  # send(key=bytes, value=bytes), e.g. a Faust topic's send


class DeadLetters:
    """Publishes rejected messages and counts them per reason.

    `send` is whatever producer the caller owns (a Faust topic's `send`, an aiokafka
    producer): the helper stays transport-agnostic so agents, the device fleet and tests
    share it.
    """

    def __init__(self, send: Send, stage: str) -> None:
        self._send = send
        self.stage = stage
        self.counts: Counter[str] = Counter()

    async def reject(
        self, raw: bytes, reason: str, detail: str, topic: str, partition: int = -1, offset: int = -1
    ) -> None:
        self.counts[reason] += 1
        log.warning("dead-letter %s[%s]@%s stage=%s reason=%s: %s", topic, partition, offset,
                    self.stage, reason, detail)
        letter = DeadLetter(bytes(raw), reason[:64], detail[:4096], topic, partition, offset, self.stage)
        await self._send(key=topic.encode(), value=encode(letter))

    async def reject_error(self, raw: bytes, error: SchemaError, topic: str, partition: int = -1,
                           offset: int = -1) -> None:
        await self.reject(raw, error.reason, error.detail, topic, partition, offset)

    @property
    def total(self) -> int:
        return sum(self.counts.values())
