"""Vector-index port for user vectors (cosine KNN with self-exclusion and a last_ts window) and its factory."""

from __future__ import annotations

import logging
import math
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_COLLECTION = "coda_users"
DEFAULT_HNSW_EF = 128
USER_KEY = "user"
LAST_TS_KEY = "last_ts"
COUNT_KEY = "count"
# Fixed namespace: the same user string maps to the same point id in every adapter and process.
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "coda-streaming/user")


@dataclass(frozen=True, slots=True)
class UserPoint:
    """One user's vector (mean of the user feature), its sample count and latest event time."""

    user: str
    vector: Sequence[float]
    count: int
    last_ts: int


@dataclass(frozen=True, slots=True)
class Neighbour:
    """A matched user and its cosine similarity to the query (higher is nearer)."""

    user: str
    score: float


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """Arguments of one `search` call, for `search_many`."""

    vector: Sequence[float]
    k: int
    exclude_user: str | None = None
    min_last_ts: int | None = None


def point_id(user: str) -> uuid.UUID:
    """Stable point id of a user: uuid5, so re-upserting replaces instead of duplicating."""
    return uuid.uuid5(_ID_NAMESPACE, user)


def as_vector(vector: Sequence[float] | np.ndarray, dim: int) -> np.ndarray | None:
    """Float32 copy of `vector`, or None when cosine is undefined for it (zero norm, NaN/inf).

    A wrong dimension is a programming error and raises ValueError.
    """
    arr = np.asarray(vector, dtype=np.float32).reshape(-1)
    if arr.shape[0] != dim:
        raise ValueError(f"vector has dimension {arr.shape[0]}, index expects {dim}")
    norm = float(np.linalg.norm(arr))
    if not math.isfinite(norm) or norm == 0.0:
        return None
    return arr


def split_usable(points: Iterable[UserPoint], dim: int) -> tuple[list[tuple[UserPoint, np.ndarray]], list[str]]:
    """Separate points with a usable vector from users whose vector is zero or non-finite.

    Zero-vector policy (all adapters): such a user is not stored, and any earlier point of
    theirs is deleted, so it can never be returned as a neighbour; a search whose query vector
    is unusable returns no neighbours. Within one batch the last point per user wins.
    """
    latest: dict[str, UserPoint] = {p.user: p for p in points}
    keep: list[tuple[UserPoint, np.ndarray]] = []
    drop: list[str] = []
    for p in latest.values():
        arr = as_vector(p.vector, dim)
        if arr is None:
            drop.append(p.user)
        else:
            keep.append((p, arr))
    if drop:
        log.debug("dropping %s users with zero or non-finite vectors", len(drop))
    return keep, drop


def payload(p: UserPoint) -> dict[str, Any]:
    return {USER_KEY: p.user, COUNT_KEY: int(p.count), LAST_TS_KEY: int(p.last_ts)}


def chunks(seq: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


class VectorIndex(ABC):
    """Port: one vector per user, cosine KNN restricted to a last_ts window, excluding the asker.

    `search` returns best first; ties are broken by the engine. Zero or non-finite vectors have
    no cosine: upserting one removes the user, and searching with one returns []. Adapters are
    not thread-safe: call each from one thread.
    """

    dim: int

    @abstractmethod
    def upsert(self, points: Sequence[UserPoint]) -> None:
        """Insert or replace users' points (batched); zero vectors delete the user instead."""

    @abstractmethod
    def delete(self, users: Iterable[str]) -> None:
        """Remove users; unknown users are ignored."""

    def search(
        self,
        vector: Sequence[float],
        k: int,
        exclude_user: str | None = None,
        min_last_ts: int | None = None,
    ) -> list[Neighbour]:
        """Up to `k` users nearest by cosine with last_ts >= min_last_ts, best first."""
        return self.search_many([SearchQuery(vector, k, exclude_user, min_last_ts)])[0]

    @abstractmethod
    def search_many(self, queries: Sequence[SearchQuery]) -> list[list[Neighbour]]:
        """`search` for each query, in order: every adapter answers in batches, one query is a batch of one."""

    @abstractmethod
    def count(self) -> int:
        """Number of stored users."""

    def flush(self) -> None:
        """Make writes durable and fully indexed; a no-op where the engine does it itself."""

    def optimize(self) -> bool:
        """Build or merge indexes now; True if work was done. No-op where a server does it itself."""
        return False

    @abstractmethod
    def close(self) -> None:
        """Release files, locks and connections."""

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _options(query: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}


def _local_path(parts: Any, default: Path) -> Path:
    """`scheme://` → default, `scheme:///abs` → /abs, `scheme://rel/dir` → rel/dir."""
    raw = f"{parts.netloc}{parts.path}"
    return Path(raw) if raw else default


def open_index(url: str, dim: int, state_dir: Path, api_key: str | None = None) -> VectorIndex:
    """Open the index named by `url`; adapters are imported lazily.

    - `edge://` (→ state_dir/"index") or `edge:///abs/path`: Qdrant Edge, in-process HNSW on disk.
      Options: hnsw_ef, m, ef_construct, indexing_threshold_kb, full_scan_threshold_kb, acorn,
      optimize_on_flush (see `agents.index.edge.EdgeIndex`).
    - `http(s)://host:port/?collection=…&api_key=…&hnsw_ef=…&prefer_grpc=1`: qdrant-client
      against a server or cluster (`api_key` may instead be passed as an argument).
    - `memory://`: qdrant-client local mode in memory (brute force; tests).
    - `qdrant-local:///path` (or `qdrant-local://` → state_dir/"qdrant-local"): local mode on disk.
    - `exact://`: numpy brute force in memory, the recall reference.
    Options go in the query string, e.g. `edge://?hnsw_ef=256`.
    """
    parts = urlsplit(url)
    opts = _options(parts.query)
    scheme = parts.scheme.lower()
    if scheme == "edge":
        from agents.index.edge import EdgeIndex

        return EdgeIndex(_local_path(parts, Path(state_dir) / "index"), dim, **EdgeIndex.parse_options(opts))
    if scheme in ("http", "https", "memory", "qdrant-local"):
        from agents.index.client import ClientIndex, client_kwargs

        kwargs, collection, hnsw_ef = client_kwargs(url, Path(state_dir), api_key)
        return ClientIndex(kwargs, collection, dim, hnsw_ef=hnsw_ef)
    if scheme == "exact":
        from agents.index.exact import ExactIndex

        return ExactIndex(dim)
    raise ValueError(
        f"unknown vector index URL {url!r}: expected edge://, http(s)://, memory://, qdrant-local:// or exact://"
    )


__all__ = [
    "DEFAULT_COLLECTION",
    "Neighbour",
    "SearchQuery",
    "UserPoint",
    "VectorIndex",
    "open_index",
    "point_id",
]
