"""Shared body of the Qdrant adapters: points written and deleted in batches by id, searches sent as one batch."""

from __future__ import annotations

import uuid
from abc import abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from agents.index import (
    USER_KEY,
    Neighbour,
    SearchQuery,
    UserPoint,
    VectorIndex,
    as_vector,
    chunks,
    payload,
    point_id,
    split_usable,
)

R = TypeVar("R")  # one engine query request
# One stored point as the engines take it: its id, vector and payload.
PointData = tuple[uuid.UUID, list[float], dict[str, Any]]


class Scored(Protocol):
    """A search hit as both engines return it: the stored payload and the cosine score."""

    payload: Any
    score: float


class BatchedIndex(VectorIndex, Generic[R]):
    """Upsert/delete/search_many written once; an engine supplies its requests and how to send them."""

    batch: int  # points per write request

    @abstractmethod
    def _write(self, points: list[PointData]) -> None:
        """Store one batch of points, replacing any with the same id."""

    @abstractmethod
    def _remove(self, ids: list[uuid.UUID]) -> None:
        """Delete one batch of point ids; unknown ids are ignored."""

    @abstractmethod
    def _request(self, q: SearchQuery, vector: list[float]) -> R:
        """The engine's query for `q`: cosine top k within its last_ts window, the asker excluded."""

    @abstractmethod
    def _query(self, requests: list[R]) -> Sequence[Sequence[Scored]]:
        """Run the requests as one batch; hits per request, best first."""

    def upsert(self, points: Sequence[UserPoint]) -> None:
        keep, drop = split_usable(points, self.dim)
        self.delete(drop)
        for batch in chunks(keep, self.batch):
            self._write([(point_id(p.user), arr.tolist(), payload(p)) for p, arr in batch])

    def delete(self, users: Iterable[str]) -> None:
        for batch in chunks([point_id(u) for u in users], self.batch):
            self._remove(list(batch))

    def search_many(self, queries: Sequence[SearchQuery]) -> list[list[Neighbour]]:
        out: list[list[Neighbour]] = [[] for _ in queries]
        todo: list[tuple[int, R]] = []
        for i, q in enumerate(queries):
            arr = as_vector(q.vector, self.dim)
            if arr is not None and q.k > 0:  # otherwise no neighbours: the engine is not asked
                todo.append((i, self._request(q, arr.tolist())))
        if todo:
            for (i, _), hits in zip(todo, self._query([r for _, r in todo]), strict=True):
                out[i] = [Neighbour(p.payload[USER_KEY], p.score) for p in hits]
        return out
