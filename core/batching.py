"""Down-tunnel batching and the per-device daily quota (paper section 4.2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


def chunk(items: Sequence[T], size: int = 25, max_size: int = 40) -> list[list[T]]:
    """Batches of `size`, growing up to `max_size` so that no small fragment is left.

    Fewer than `size` items make one (final, small) batch. Otherwise the remainder is spread
    over the full batches when it fits under `max_size`, else it becomes its own batch.
    """
    n = len(items)
    if n == 0:
        return []
    full = n // size
    if full == 0:
        return [list(items)]
    rest = n - full * size
    if rest > (max_size - size) * full:
        full += 1  # the remainder cannot be absorbed: one more (smaller) batch
        sizes = [size] * (full - 1) + [rest]
    else:
        sizes = [size + rest // full + (1 if i < rest % full else 0) for i in range(full)]
    out, start = [], 0
    for s in sizes:
        out.append(list(items[start:start + s]))
        start += s
    return out


@dataclass(frozen=True, slots=True)
class DailyQuota:
    """Batches delivered to one device on one event-time day."""

    day: int = -1
    used: int = 0

    def on(self, day: int) -> DailyQuota:
        """The quota as seen on `day` (a new day starts from zero)."""
        return self if day == self.day else DailyQuota(day, 0)

    def remaining(self, per_day: int) -> int:
        return max(0, per_day - self.used)

    def spend(self, batches: int) -> DailyQuota:
        return DailyQuota(self.day, self.used + batches)
