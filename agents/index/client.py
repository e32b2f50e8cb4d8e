"""qdrant-client adapter: a Qdrant server or cluster by URL, or the client's local mode (memory or disk)."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

from qdrant_client import QdrantClient, models

from agents.index import DEFAULT_COLLECTION, DEFAULT_HNSW_EF, LAST_TS_KEY, USER_KEY, SearchQuery, point_id
from agents.index.batched import BatchedIndex, PointData

log = logging.getLogger(__name__)


def client_kwargs(url: str, state_dir: Path, api_key: str | None = None) -> tuple[dict[str, Any], str, int]:
    """QdrantClient kwargs, collection name and hnsw_ef from an index URL (see `open_index`)."""
    parts = urlsplit(url)
    opts = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    collection = opts.pop("collection", DEFAULT_COLLECTION)
    hnsw_ef = int(opts.pop("hnsw_ef", DEFAULT_HNSW_EF))
    key = opts.pop("api_key", None) or api_key
    prefer_grpc = opts.pop("prefer_grpc", "false").lower() in ("1", "true", "yes")
    if opts:
        raise ValueError(f"unknown options {sorted(opts)} in vector index URL {url!r}")
    scheme = parts.scheme.lower()
    if scheme == "memory":
        kwargs: dict[str, Any] = {"location": ":memory:"}
    elif scheme == "qdrant-local":
        raw = f"{parts.netloc}{parts.path}"
        kwargs = {"path": raw or str(state_dir / "qdrant-local")}
    else:
        base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        kwargs = {"url": base, "api_key": key, "prefer_grpc": prefer_grpc}
    return kwargs, collection, hnsw_ef


class ClientIndex(BatchedIndex[models.QueryRequest]):
    """One collection; created on first open with cosine, HNSW m=16/ef_construct=100 and a last_ts index."""

    batch = 512  # points per request: keeps HTTP/gRPC bodies well under server limits

    def __init__(self, kwargs: dict[str, Any], collection: str, dim: int, *, hnsw_ef: int = DEFAULT_HNSW_EF) -> None:
        self.dim = dim
        self.collection = collection
        self.hnsw_ef = hnsw_ef
        self._local = "url" not in kwargs
        self._client = QdrantClient(**kwargs)
        self._ensure_collection()

    def _ensure_collection(self) -> None:
        if self._client.collection_exists(self.collection):
            size = self._client.get_collection(self.collection).config.params.vectors.size  # type: ignore[union-attr]
            if size != self.dim:
                raise ValueError(f"collection {self.collection!r} has dimension {size}, index expects {self.dim}")
            return
        self._client.create_collection(
            self.collection,
            vectors_config=models.VectorParams(size=self.dim, distance=models.Distance.COSINE),
            hnsw_config=models.HnswConfigDiff(m=16, ef_construct=100),
        )
        if not self._local:  # local mode ignores payload indexes and warns about them
            self._client.create_payload_index(self.collection, LAST_TS_KEY, models.PayloadSchemaType.INTEGER)
        log.info("created collection %s (dim %s)", self.collection, self.dim)

    def _write(self, points: list[PointData]) -> None:
        structs = [models.PointStruct(id=str(pid), vector=vector, payload=data) for pid, vector, data in points]
        self._client.upsert(self.collection, structs, wait=True)

    def _remove(self, ids: list[uuid.UUID]) -> None:
        self._client.delete(self.collection, models.PointIdsList(points=[str(pid) for pid in ids]), wait=True)

    @staticmethod
    def _filter(q: SearchQuery) -> models.Filter | None:
        must = []
        if q.min_last_ts is not None:
            must.append(models.FieldCondition(key=LAST_TS_KEY, range=models.Range(gte=q.min_last_ts)))
        must_not = [models.HasIdCondition(has_id=[str(point_id(q.exclude_user))])] if q.exclude_user is not None else []
        return models.Filter(must=must or None, must_not=must_not or None) if must or must_not else None

    def _request(self, q: SearchQuery, vector: list[float]) -> models.QueryRequest:
        return models.QueryRequest(
            query=vector,
            limit=q.k,
            filter=self._filter(q),
            # Local mode is brute force and warns about search params, so send none there.
            params=None if self._local else models.SearchParams(hnsw_ef=max(self.hnsw_ef, q.k)),
            with_payload=[USER_KEY],
        )

    def _query(self, requests: list[models.QueryRequest]) -> list[list[models.ScoredPoint]]:
        return [res.points for res in self._client.query_batch_points(self.collection, requests)]

    def count(self) -> int:
        return self._client.count(self.collection, exact=True).count

    def close(self) -> None:
        self._client.close()
