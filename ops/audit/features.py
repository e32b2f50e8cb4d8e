"""A run's sample user features as one matrix, built once for the exports and the checks."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from core.features import FeatureSpace, user_feature_sparse
from core.sample import DAY, Sample


@dataclass(frozen=True)
class FeatureMatrix:
    """One row per sample, ordered by (user, ts, sample id): each user's rows are one block, oldest first."""

    samples: list[Sample]  # in row order
    users: list[str]  # sorted
    starts: list[int]  # users[i]'s rows are values[starts[i]:starts[i + 1]]
    ts: np.ndarray  # event time of each row
    values: np.ndarray  # rows x tag buckets: each sample's `user_feature`, bit for bit
    used: np.ndarray  # the columns that hold a non-zero anywhere (few: one per tag bucket in use)

    def blocks(self, asof_day: int | None = None) -> Iterator[tuple[str, np.ndarray, int]]:
        """(user, feature rows, newest ts) of each user with samples by the end of `asof_day` (None: all)."""
        for user, start, end in zip(self.users, self.starts, self.starts[1:], strict=False):
            if asof_day is not None:  # a block is in time order, so the days up to asof_day are a prefix
                end = start + int(np.searchsorted(self.ts[start:end] // DAY, asof_day, side="right"))
            if end > start:
                yield user, self.values[start:end], int(self.ts[end - 1])

    def mean(self, rows: np.ndarray) -> np.ndarray:
        """`core.vectors.mean_vector` of `rows`, bit for bit: math.fsum per column, all-zero ones skipped."""
        out = np.zeros(self.values.shape[1])
        out[self.used] = [math.fsum(col) / len(rows) for col in rows[:, self.used].T.tolist()]
        return out


def feature_matrix(samples: Iterable[Sample], space: FeatureSpace) -> FeatureMatrix:
    """Each sample's sparse feature scattered into a dense row: no 256-float list built per sample."""
    ordered = sorted(samples, key=lambda s: (s.user, s.ts, s.sample_id))
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for row, s in enumerate(ordered):
        feature = user_feature_sparse(s, space.user_feature, space.user_period_days, space.tag_buckets)
        rows += [row] * len(feature)
        cols += feature
        vals += feature.values()
    values = np.zeros((len(ordered), space.tag_buckets))
    values[rows, cols] = vals
    names = [s.user for s in ordered]
    starts = [i for i, name in enumerate(names) if i == 0 or name != names[i - 1]]
    return FeatureMatrix(ordered, [names[i] for i in starts], [*starts, len(names)],
                         np.array([s.ts for s in ordered], dtype=np.int64), values,
                         np.flatnonzero(values.any(axis=0)))


def rounded_rows(matrix: FeatureMatrix, digits: int = 8) -> Iterator[list[float]]:
    """Each row as a list with its non-zero entries passed through `round` (a zero rounds to itself)."""
    at, cols = np.nonzero(matrix.values)
    rounded = [round(v, digits) for v in matrix.values[at, cols].tolist()]
    ends = np.searchsorted(at, np.arange(1, len(matrix.samples) + 1)).tolist()
    cols_list, start = cols.tolist(), 0
    for end in ends:
        row = [0.0] * matrix.values.shape[1]
        for c, v in zip(cols_list[start:end], rounded[start:end], strict=True):
            row[c] = v
        yield row
        start = end
