"""Algorithm 1, incrementally: a user's running count and sum of features, idempotent by sample id."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from core.features import FeatureSpace, user_feature_sparse
from core.sample import DAY, Sample

KEEP_RECENT = 500  # in-window samples kept per user (newest)
DEDUP_DAYS = 14  # how long a counted sample id is remembered against redelivery


@dataclass(slots=True)
class UserAccumulator:
    """Running sum of the user feature; the mean is the user's vector.

    `counted` remembers which sample ids are already in the sum, so a redelivered sample
    (at-least-once delivery) is never counted twice. `recent` holds the user's samples inside
    the match window, newest last: they are what neighbours are sent.
    """

    count: int = 0
    total: list[float] = field(default_factory=list)
    last_ts: int = 0
    counted: dict[str, int] = field(default_factory=dict)  # sample id -> ts
    recent: list[Sample] = field(default_factory=list)

    def add(self, samples: Iterable[Sample], space: FeatureSpace) -> list[Sample]:
        """Fold new samples in; returns those that were actually new."""
        if not self.total:
            self.total = [0.0] * space.tag_buckets
        self.total = list(self.total)  # updated in place below: never the caller's list
        fresh = []
        for sample in samples:
            if sample.sample_id in self.counted:
                continue
            self.counted[sample.sample_id] = sample.ts
            feature = user_feature_sparse(sample, space.user_feature, space.user_period_days, space.tag_buckets)
            for bucket, value in feature.items():  # the zeros would add nothing
                self.total[bucket] += value
            self.count += 1
            self.last_ts = max(self.last_ts, sample.ts)
            fresh.append(sample)
        if fresh:
            self.recent = sorted(self.recent + fresh, key=lambda s: (s.ts, s.sample_id))
        return fresh

    @property
    def mean(self) -> list[float]:
        return [t / self.count for t in self.total] if self.count else list(self.total)

    def prune(self, now_ts: int, window_days: int, dedup_days: int, keep_recent: int) -> None:
        """Forget samples that left the match window and ids past the redelivery horizon."""
        window_start = (now_ts // DAY - window_days + 1) * DAY  # whole event-time days, as matching
        self.recent = [s for s in self.recent if s.ts >= window_start][-keep_recent:]
        horizon = now_ts - dedup_days * DAY
        if len(self.counted) > keep_recent:
            self.counted = {sid: ts for sid, ts in self.counted.items() if ts >= horizon}


def fold(acc: UserAccumulator | None, samples: Iterable[Sample], space: FeatureSpace,
         window_days: int) -> tuple[UserAccumulator, list[Sample]]:
    """Pure step: the previous accumulator (left as it was) + samples → the new one and the samples that were new."""
    folded = UserAccumulator() if acc is None else \
        UserAccumulator(acc.count, list(acc.total), acc.last_ts, dict(acc.counted), list(acc.recent))
    return folded, absorb(folded, samples, space, window_days)


def absorb(acc: UserAccumulator, samples: Iterable[Sample], space: FeatureSpace, window_days: int) -> list[Sample]:
    """`fold` in place, for an accumulator that is already the caller's own (one just decoded from state)."""
    fresh = acc.add(samples, space)
    acc.prune(acc.last_ts, window_days, DEDUP_DAYS, KEEP_RECENT)
    return fresh


def mean_vector(features: Sequence[Sequence[float]]) -> list[float]:
    """Batch mean, the reference the incremental path is checked against."""
    n = len(features)
    return [math.fsum(col) / n for col in zip(*features, strict=True)] if n else []
