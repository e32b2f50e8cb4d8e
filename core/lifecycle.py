"""On-device sample lifecycle rules (paper section 4.4): ages, roles, expiry and forced cleanup.

Pure functions on plain data. Ages are whole event-time days: a sample's age is the
device's current day minus the sample's day (`ts // 86400`), so a replay that advances day
by day ages every sample identically, whatever the wall clock says.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from core.sample import DAY


class Timed(Protocol):
    @property
    def ts(self) -> int: ...


T = TypeVar("T", bound=Timed)


class LocalUse(enum.Enum):
    """What a local sample may serve, by age (days)."""

    VALIDATE = "validate"  # age ≤ t: classifier training + CTR model validation
    TRAIN = "train"  # t < age ≤ t': classifier training + CTR model training
    EXPIRED = "expired"  # age > t': deleted


class OutsideRole(enum.Enum):
    """Where an outside (matched) sample is in its life; it is deleted after each use."""

    NEW = "new"  # stored, not yet filtered (score NULL)
    KEPT = "kept"  # scored ≥ σ by the sample classifier: waits for CTR training


def day_of(ts: int) -> int:
    return ts // DAY


def age_days(now_ts: int, ts: int) -> int:
    """Whole event-time days between a sample and now; never negative (a late clock is day 0)."""
    return max(0, day_of(now_ts) - day_of(ts))


def local_use(now_ts: int, ts: int, t_days: int, t2_days: int) -> LocalUse:
    age = age_days(now_ts, ts)
    if age <= t_days:
        return LocalUse.VALIDATE
    if age <= t2_days:
        return LocalUse.TRAIN
    return LocalUse.EXPIRED


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """The lifecycle as ts thresholds, for SQL: `ts >= validate_from` → VALIDATE, etc."""

    validate_from: int  # first ts of age ≤ t
    keep_from: int  # first ts of age ≤ t' (older is expired)


def cutoffs(now_ts: int, t_days: int, t2_days: int) -> Cutoffs:
    """Day-aligned thresholds equivalent to `local_use` (age = day difference)."""
    today = day_of(now_ts)
    return Cutoffs((today - t_days) * DAY, (today - t2_days) * DAY)


@dataclass(frozen=True, slots=True)
class LocalSplit(Generic[T]):
    """Local samples by use; `classifier` (Algorithm 2's positives) is validate + train."""

    validate: list[T]
    train: list[T]
    expired: list[T]

    @property
    def classifier(self) -> list[T]:
        return [*self.validate, *self.train]


def split_local(samples: Iterable[T], now_ts: int, t_days: int, t2_days: int) -> LocalSplit[T]:
    """Partition local samples by `local_use`, keeping their order."""
    out: dict[LocalUse, list[T]] = {use: [] for use in LocalUse}
    for s in samples:
        out[local_use(now_ts, s.ts, t_days, t2_days)].append(s)
    return LocalSplit(out[LocalUse.VALIDATE], out[LocalUse.TRAIN], out[LocalUse.EXPIRED])


@dataclass(frozen=True, slots=True)
class FilterOutcome:
    """What to do with outside samples after Algorithm 2 ran over them."""

    delete: list[str]  # classifier negatives (used up) and scored < σ
    keep: dict[str, float]  # scored ≥ σ → score; they wait for CTR training


def after_filter(classifier_ids: Iterable[str], scores: dict[str, float], sigma: float) -> FilterOutcome:
    """Classifier-training samples are deleted after training; scored ones below σ are dropped."""
    delete = list(dict.fromkeys(classifier_ids))
    keep: dict[str, float] = {}
    for sid, score in scores.items():
        if score >= sigma:
            keep[sid] = score
        else:
            delete.append(sid)
    return FilterOutcome(delete, keep)


def after_training(used_ids: Iterable[str]) -> list[str]:
    """Kept outside samples are deleted once they were used in a CTR training round."""
    return list(dict.fromkeys(used_ids))


# --- forced cleanup when a table reaches its limit ---


@dataclass(frozen=True, slots=True)
class Row:
    """The indexed columns cleanup needs; `score` None = not scored yet (counts as 0)."""

    sample_id: str
    ts: int
    score: float | None = None


def must_clean(count: int, adding: int, limit: int) -> bool:
    """The table reaches its limit when `adding` more rows would not fit."""
    return count + adding > limit


def cleanup_outside(rows: Sequence[Row], target: int) -> list[str]:
    """Ids to drop so `target` rows remain: lowest score first (unscored = 0), then oldest, then id."""
    excess = len(rows) - target
    if excess <= 0:
        return []
    order = sorted(rows, key=lambda r: (r.score if r.score is not None else 0.0, r.ts, r.sample_id))
    return [r.sample_id for r in order[:excess]]


def cleanup_local(rows: Sequence[Row], target: int) -> list[str]:
    """Ids to drop so `target` rows remain: oldest first (ties by id, for determinism)."""
    excess = len(rows) - target
    if excess <= 0:
        return []
    order = sorted(rows, key=lambda r: (r.ts, r.sample_id))
    return [r.sample_id for r in order[:excess]]


def half(limit: int) -> int:
    """Forced cleanup shrinks a full table to half its limit."""
    return limit // 2


Cleanup = Callable[[Sequence[Row], int], list[str]]


def plan_insert(existing: Sequence[Row], new: Sequence[Row], limit: int, cleanup: Cleanup) -> list[str]:
    """Ids to drop (existing or new) so that inserting `new` never leaves more than `limit` rows.

    A table that cannot take `new` is cleaned to half its limit *before* the insert, so fresh
    rows survive; only when `new` alone overflows the rest are new rows ranked with the others.
    `new` must not repeat ids of `existing` (the caller skips duplicates).
    """
    if not must_clean(len(existing), len(new), limit):
        return []
    target = half(limit)
    dropped = cleanup(existing, target)
    if len(existing) - len(dropped) + len(new) <= limit:
        return dropped
    gone = set(dropped)
    rest = [r for r in existing if r.sample_id not in gone]
    return dropped + cleanup([*rest, *new], target)
