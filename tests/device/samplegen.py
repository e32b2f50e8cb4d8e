"""Synthetic samples and behaviour events on a fake event-time clock, shared by the device tests."""

from __future__ import annotations

import random
from collections.abc import Callable

from core.features import FeatureSpace
from core.sample import Sample
from streams.schemas import BehaviourEvent

START = 1_699_920_000  # a UTC midnight: day boundaries fall on whole days
DAY = 86_400

SampleMaker = Callable[..., list[Sample]]
EventMaker = Callable[..., list[BehaviourEvent]]


def make_samples(
    n: int,
    prefix: str = "s",
    ts: int = START,
    seed: int = 0,
    space: FeatureSpace | None = None,
    tags: range = range(0, 16),
) -> list[Sample]:
    """`n` valid samples whose behaviour tags come from `tags` (a taste), labels ~30% clicks."""
    space = space or FeatureSpace()
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(2, space.seq_len)
        out.append(
            Sample(
                f"{prefix}{i}",
                "",
                ts + i,
                rng.randrange(space.item_buckets),
                (rng.choice(tags),),
                tuple(rng.randrange(space.item_buckets) for _ in range(length)),
                tuple((rng.choice(tags),) for _ in range(length)),
                (rng.randrange(space.profile_buckets),),
                int(rng.random() < 0.3),
            )
        )
    return out


def make_events(user: str, n: int, day: int = 0, seed: int = 0, items: int = 30) -> list[BehaviourEvent]:
    """`n` impressions/clicks of one user on event-time day `day` (plus an occasional page view)."""
    rng = random.Random(seed * 1000 + day)
    out = []
    for i in range(n):
        action = "page_view" if i % 10 == 9 else ("click" if rng.random() < 0.3 else "impression")
        item = rng.randrange(items)
        out.append(
            BehaviourEvent(
                user,
                START + day * DAY + 60 * i,
                f"item{item}",
                [f"tag{item % 6}"],
                action,
                {"age": "25-34"} if i == 0 else None,
            )
        )
    return out
