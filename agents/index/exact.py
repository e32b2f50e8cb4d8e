"""Exact in-memory cosine KNN with numpy: the recall reference and a small-scale index."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np

from agents.index import Neighbour, SearchQuery, UserPoint, VectorIndex, as_vector, split_usable

log = logging.getLogger(__name__)

_SCORE_CELLS = 1 << 25  # queries × users scored per matrix product: caps the score matrix at 128 MiB


class ExactIndex(VectorIndex):
    """Unit-normalised rows in one growing matrix; delete swaps the last row into the hole."""

    def __init__(self, dim: int, capacity: int = 1024) -> None:
        self.dim = dim
        self._rows = np.zeros((capacity, dim), dtype=np.float32)
        self._last_ts = np.zeros(capacity, dtype=np.int64)
        self._users: list[str] = []
        self._row_of: dict[str, int] = {}

    def upsert(self, points: Sequence[UserPoint]) -> None:
        keep, drop = split_usable(points, self.dim)
        self.delete(drop)
        for p, arr in keep:
            row = self._row_of.get(p.user)
            if row is None:
                row = self._append(p.user)
            self._rows[row] = arr / np.linalg.norm(arr)
            self._last_ts[row] = p.last_ts

    def _append(self, user: str) -> int:
        row = len(self._users)
        if row == self._rows.shape[0]:
            self._rows = np.concatenate([self._rows, np.zeros_like(self._rows)])
            self._last_ts = np.concatenate([self._last_ts, np.zeros_like(self._last_ts)])
        self._users.append(user)
        self._row_of[user] = row
        return row

    def delete(self, users: Iterable[str]) -> None:
        for user in users:
            row = self._row_of.pop(user, None)
            if row is None:
                continue
            last = len(self._users) - 1
            if row != last:
                moved = self._users[last]
                self._rows[row] = self._rows[last]
                self._last_ts[row] = self._last_ts[last]
                self._users[row] = moved
                self._row_of[moved] = row
            self._users.pop()

    def search_many(self, queries: Sequence[SearchQuery]) -> list[list[Neighbour]]:
        step = max(1, _SCORE_CELLS // max(1, len(self._users)))
        out: list[list[Neighbour]] = []
        for block in range(0, len(queries), step):
            out.extend(self._search_block(queries[block : block + step]))
        return out

    def _search_block(self, queries: Sequence[SearchQuery]) -> list[list[Neighbour]]:
        n = len(self._users)
        vecs = [as_vector(q.vector, self.dim) for q in queries]
        qmat = np.stack([v / np.linalg.norm(v) if v is not None else np.zeros(self.dim, np.float32) for v in vecs])
        scores = qmat @ self._rows[:n].T if n else np.zeros((len(queries), 0), np.float32)
        return [self._top(scores[i], q) if vecs[i] is not None else [] for i, q in enumerate(queries)]

    def _top(self, scores: np.ndarray, q: SearchQuery) -> list[Neighbour]:
        """Top k of one score row (a scratch copy: filtered users are set to -inf in place)."""
        if q.min_last_ts is not None:
            scores[self._last_ts[: scores.shape[0]] < q.min_last_ts] = -np.inf
        if q.exclude_user is not None and q.exclude_user in self._row_of:
            scores[self._row_of[q.exclude_user]] = -np.inf
        k = min(q.k, scores.shape[0])
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k] if k < scores.shape[0] else np.arange(k)
        top = top[np.argsort(-scores[top], kind="stable")]
        return [Neighbour(self._users[i], float(scores[i])) for i in top if scores[i] > -np.inf]

    def count(self) -> int:
        return len(self._users)

    def close(self) -> None:
        self._rows = self._rows[:0]
        self._users.clear()
        self._row_of.clear()
