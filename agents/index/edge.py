"""Qdrant Edge adapter: the Qdrant engine in-process (HNSW, on-disk shard, WAL), no server."""

from __future__ import annotations

import logging
import time
import uuid
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from agents.index import DEFAULT_HNSW_EF, LAST_TS_KEY, USER_KEY, SearchQuery, point_id
from agents.index.batched import BatchedIndex, PointData

log = logging.getLogger(__name__)

_INT_OPTIONS = ("hnsw_ef", "m", "ef_construct", "indexing_threshold_kb", "full_scan_threshold_kb")
_BOOL_OPTIONS = ("acorn", "optimize_on_flush")


class EdgeIndex(BatchedIndex[qe.QueryRequest]):
    """One Edge shard in `path`; reopening the same path finds the points (the WAL replays).

    Edge has no background optimizer. Upserts are searchable at once, from a plain
    (brute-force) appendable segment; HNSW is built only when `optimize()` runs, which
    `flush()` calls unless `optimize_on_flush=False`. The optimizer indexes a segment once it
    exceeds `indexing_threshold_kb` (engine default when None: ~10 MB, i.e. ~40k users at
    dim 64), and a search whose filter keeps fewer than `full_scan_threshold_kb` of vectors
    is exact; both count KiB of vector data (dim × 4 bytes per point).

    Every qdrant_edge call holds the GIL (0.9.0): a search blocks the process for its ~1 ms,
    and an optimize for as long as the build takes (~25 s at 100k users, ~5 min at 1M on two
    cores), threads and event loops included. Call `flush()`/`optimize()` where such a pause
    is acceptable.

    Filtered search uses ACORN (`acorn=True`): without it (and without payload-aware HNSW
    links, which this index skips for last_ts because they cost up to 5x build time), a
    window matching 5–20% of users lost most of its recall once the matching set exceeded the
    full-scan threshold (measured at 100k users: recall@100 0.18 at 10%, 0.99 with ACORN).
    """

    batch = 1024  # points per update operation: one WAL record each, bounded memory

    def __init__(
        self,
        path: Path,
        dim: int,
        *,
        hnsw_ef: int = DEFAULT_HNSW_EF,
        m: int = 16,
        ef_construct: int = 100,
        indexing_threshold_kb: int | None = None,
        full_scan_threshold_kb: int = 10_000,
        acorn: bool = True,
        optimize_on_flush: bool = True,
    ) -> None:
        self.dim = dim
        self.path = Path(path)
        self.hnsw_ef = hnsw_ef
        self.optimize_on_flush = optimize_on_flush
        # Engine default max_selectivity: ACORN only for filters that keep a minority of points.
        self._acorn = qe.AcornSearchParams(enable=True) if acorn else None
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
            hnsw_config=qe.HnswIndexConfig(m=m, ef_construct=ef_construct, full_scan_threshold=full_scan_threshold_kb),
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=indexing_threshold_kb),
        )
        self._shard = self._open(config)
        self._ensure_payload_index()

    @staticmethod
    def parse_options(opts: dict[str, str]) -> dict[str, Any]:
        unknown = set(opts) - set(_INT_OPTIONS) - set(_BOOL_OPTIONS)
        if unknown:
            raise ValueError(f"unknown edge:// options {sorted(unknown)}; known: {_INT_OPTIONS + _BOOL_OPTIONS}")
        return {k: (v.lower() in ("1", "true", "yes") if k in _BOOL_OPTIONS else int(v)) for k, v in opts.items()}

    def _open(self, config: qe.EdgeConfig) -> qe.EdgeShard:
        existing = (self.path / "edge_config.json").exists()
        try:
            if existing:
                # Passing the config checks it against the stored segments (dimension, distance).
                return qe.EdgeShard.load(str(self.path), config)
            self.path.mkdir(parents=True, exist_ok=True)
            return qe.EdgeShard.create(str(self.path), config)
        except Exception as exc:  # Edge raises bare Exception
            raise ValueError(f"cannot {'load' if existing else 'create'} edge index at {self.path}: {exc}") from exc

    def _ensure_payload_index(self) -> None:
        if LAST_TS_KEY not in self._shard.info().payload_schema:
            # enable_hnsw=False: no extra per-range HNSW links; ACORN covers selective windows.
            params = qe.IntegerIndexParams(lookup=False, range=True, enable_hnsw=False)
            self._shard.update(qe.UpdateOperation.create_field_index(LAST_TS_KEY, params))

    def _write(self, points: list[PointData]) -> None:
        self._shard.update(qe.UpdateOperation.upsert_points([qe.Point(*p) for p in points]))

    def _remove(self, ids: list[uuid.UUID]) -> None:
        self._shard.update(qe.UpdateOperation.delete_points(ids))

    def _request(self, q: SearchQuery, vector: list[float]) -> qe.QueryRequest:
        must = []
        if q.min_last_ts is not None:
            must.append(qe.FieldCondition(key=LAST_TS_KEY, range=qe.RangeFloat(gte=float(q.min_last_ts))))
        must_not = [qe.HasIdCondition({point_id(q.exclude_user)})] if q.exclude_user is not None else []
        return qe.QueryRequest(
            limit=q.k,
            query=qe.Query.Nearest(vector),
            filter=qe.Filter(must=must, must_not=must_not) if must or must_not else None,
            params=qe.SearchParams(hnsw_ef=max(self.hnsw_ef, q.k), acorn=self._acorn),
            with_payload=[USER_KEY],
        )

    def _query(self, requests: list[qe.QueryRequest]) -> list[list[qe.ScoredPoint]]:
        return self._shard.query_batch(qe.QueryBatchRequest(requests))

    def count(self) -> int:
        return self._shard.count(qe.CountRequest(exact=True))

    def optimize(self) -> bool:
        """Build HNSW / merge / vacuum segments as the optimizer plans; blocks. True if it did work."""
        start = time.perf_counter()
        changed = self._shard.optimize()
        if changed:
            log.info("edge index optimized in %.2f s: %s", time.perf_counter() - start, self.info())
        return changed

    def flush(self) -> None:
        """Persist segments, then run the optimizer (milliseconds when below its thresholds)."""
        self._shard.flush()
        if self.optimize_on_flush and self.optimize():
            self._shard.flush()

    def info(self) -> dict[str, int]:
        info = self._shard.info()
        return {
            "points": info.points_count,
            "indexed_vectors": info.indexed_vectors_count,
            "segments": info.segments_count,
        }

    def close(self) -> None:
        if self._shard is not None:
            self._shard.close()
            self._shard = None  # type: ignore[assignment]
