"""The training sample every part of CoDA agrees on: what the CTR model and classifier consume."""

from __future__ import annotations

from dataclasses import dataclass

DAY = 86_400  # seconds: every rule that speaks of days (quotas, lifecycle, windows) uses event-time days
# actions that become training samples; the others (e.g. a purchase) only extend the behaviour history
SAMPLE_ACTIONS = frozenset({"impression", "click"})


@dataclass(frozen=True, slots=True)
class Sample:
    """One desensitized training example.

    Item, tag and profile values are already hashed into integer buckets (see
    `core.features`), so the models index embeddings directly and no raw personal value
    travels with a sample.
    """

    sample_id: str
    user: str  # pseudonymous user id
    ts: int  # event time, unix seconds
    item: int  # target item bucket
    tags: tuple[int, ...]  # tag buckets of the target item
    seq: tuple[int, ...]  # item buckets of the user's earlier behaviour, oldest first
    seq_tags: tuple[tuple[int, ...], ...]  # tag buckets of each item in `seq`
    profile: tuple[int, ...]  # profile "field=value" buckets
    label: int  # 1 = click, 0 = no click

    @property
    def day(self) -> int:
        """Event-time day index (UTC)."""
        return self.ts // DAY
