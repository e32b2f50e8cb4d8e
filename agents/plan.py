"""What a handler decided, in the order it must happen: the records to send, the state to write, counts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agents.context import CloudContext
from agents.state import KeyedState
from streams.schemas import Record


@dataclass(frozen=True, slots=True)
class Send:
    """`record` to `topic` keyed by `key`, on `partition` when given (else the key's)."""

    topic: str
    key: str
    record: Record
    partition: int | None = None


@dataclass(frozen=True, slots=True)
class Write:
    """A state write (`value` None: a delete), its changelog record on `partition`."""

    state: KeyedState[Any]
    partition: int
    key: bytes
    value: Record | None

    async def apply(self) -> None:
        if self.value is None:
            await self.state.drop(self.partition, self.key)
        else:
            await self.state.put(self.partition, self.key, self.value)


@dataclass
class Plan:
    """Sends and writes in order (output before state, wherever a crash in between must not lose it)."""

    steps: list[Send | Write] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def send(self, topic: str, key: str, record: Record, partition: int | None = None) -> None:
        self.steps.append(Send(topic, key, record, partition))

    def put(self, state: KeyedState[Any], partition: int, key: bytes, value: Record) -> None:
        self.steps.append(Write(state, partition, key, value))

    def drop(self, state: KeyedState[Any], partition: int, key: bytes) -> None:
        self.steps.append(Write(state, partition, key, None))

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n  # a zero still names the counter in the stats, as it always did

    @property
    def sends(self) -> list[Send]:
        return [step for step in self.steps if isinstance(step, Send)]

    @property
    def writes(self) -> list[Write]:
        return [step for step in self.steps if isinstance(step, Write)]


async def carry_out(plan: Plan, send: Callable[[Send], Awaitable[None]]) -> None:
    """The plan's sends and writes, one after the other in its order."""
    for step in plan.steps:
        if isinstance(step, Send):
            await send(step)
        else:
            await step.apply()


async def perform(ctx: CloudContext, stage: str, plan: Plan) -> None:
    """Carry the plan out on the worker's topics and tables, then add its counts to `stage`'s."""
    async def send(step: Send) -> None:
        await ctx.send(step.topic, step.key, step.record, partition=step.partition)

    await carry_out(plan, send)
    extra = ctx.stage(stage).extra
    for name, n in plan.counts.items():
        extra[name] += n


async def collect(plan: Plan) -> list[Send]:
    """Carry the plan out without a broker (over dict states): writes applied, sends returned in order."""
    sent: list[Send] = []

    async def keep(step: Send) -> None:
        sent.append(step)

    await carry_out(plan, keep)
    return sent
