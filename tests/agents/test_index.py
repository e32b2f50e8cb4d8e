"""Contract tests shared by every vector-index adapter, plus Edge recall against exact KNN."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agents.index import Neighbour, SearchQuery, UserPoint, VectorIndex, open_index

DIM = 8


def unit(i: int) -> list[float]:
    v = [0.0] * DIM
    v[i] = 1.0
    return v


def users(result: list[Neighbour]) -> list[str]:
    return [n.user for n in result]


def random_points(n: int, seed: int = 0) -> list[UserPoint]:
    rng = np.random.default_rng(seed)
    vecs = rng.normal(size=(n, DIM))
    return [UserPoint(f"u{i}", vecs[i].tolist(), 1 + i % 5, 1000 + i) for i in range(n)]


class IndexContract:
    """What every adapter must do; a subclass sets `url`, and `reopen_url` if it persists."""

    url: str
    reopen_url: str | None = None  # `{tmp}` is replaced by the test's tmp_path

    def open(self, tmp_path: Path, url: str | None = None) -> VectorIndex:
        return open_index((url or self.url).replace("{tmp}", str(tmp_path)), DIM, tmp_path)

    @pytest.fixture
    def index(self, tmp_path: Path) -> Iterator[VectorIndex]:
        idx = self.open(tmp_path)
        yield idx
        idx.close()

    def test_nearest_by_cosine_not_by_length(self, index: VectorIndex) -> None:
        x = unit(0)
        index.upsert([
            UserPoint("far-but-aligned", [10 * a + 0.5 * b for a, b in zip(x, unit(1))], 3, 10),
            UserPoint("near-but-tilted", [0.5 * a + 0.4 * b for a, b in zip(x, unit(1))], 3, 10),
            UserPoint("orthogonal", unit(2), 3, 10),
        ])
        got = index.search(x, 3)
        assert users(got) == ["far-but-aligned", "near-but-tilted", "orthogonal"]
        assert got[0].score == pytest.approx(10 / np.hypot(10, 0.5), abs=1e-5)
        assert got[2].score == pytest.approx(0.0, abs=1e-6)

    def test_exclude_user(self, index: VectorIndex) -> None:
        index.upsert([UserPoint("me", unit(0), 1, 10), UserPoint("you", [1, 0.1] + [0] * (DIM - 2), 1, 10)])
        assert users(index.search(unit(0), 5, exclude_user="me")) == ["you"]
        assert users(index.search(unit(0), 5, exclude_user="nobody")) == ["me", "you"]

    def test_min_last_ts_is_inclusive(self, index: VectorIndex) -> None:
        index.upsert([UserPoint(f"t{ts}", [1, ts / 100] + [0] * (DIM - 2), 1, ts) for ts in (5, 10, 15)])
        assert sorted(users(index.search(unit(0), 5, min_last_ts=10))) == ["t10", "t15"]
        assert index.search(unit(0), 5, min_last_ts=16) == []

    def test_reupsert_replaces(self, index: VectorIndex) -> None:
        index.upsert([UserPoint("a", unit(0), 1, 10), UserPoint("b", unit(1), 1, 10)])
        index.upsert([UserPoint("a", unit(1), 2, 20)])
        assert index.count() == 2
        assert sorted(users(index.search(unit(1), 5, min_last_ts=0))) == ["a", "b"]
        assert users(index.search(unit(1), 5, min_last_ts=15)) == ["a"]

    def test_last_point_in_a_batch_wins(self, index: VectorIndex) -> None:
        index.upsert([UserPoint("a", unit(0), 1, 10), UserPoint("a", unit(1), 2, 20)])
        assert index.count() == 1
        assert index.search(unit(1), 1)[0].score == pytest.approx(1.0, abs=1e-5)

    def test_delete_and_count(self, index: VectorIndex) -> None:
        index.upsert(random_points(30))
        assert index.count() == 30
        index.delete(["u3", "u7", "not-a-user"])
        assert index.count() == 28
        found = users(index.search(unit(0), 30))
        assert "u3" not in found and "u7" not in found and len(found) == 28

    def test_zero_vector_is_never_stored_or_returned(self, index: VectorIndex) -> None:
        index.upsert([UserPoint("a", unit(0), 1, 10), UserPoint("z", [0.0] * DIM, 1, 10)])
        assert index.count() == 1
        assert users(index.search(unit(0), 5)) == ["a"]
        index.upsert([UserPoint("a", [0.0] * DIM, 2, 20), UserPoint("nan", [float("nan")] * DIM, 1, 10)])
        assert index.count() == 0  # a zero vector replaces, i.e. removes, the earlier one
        index.upsert([UserPoint("b", unit(1), 1, 10)])
        assert index.search([0.0] * DIM, 5) == []

    def test_wrong_dimension_raises(self, index: VectorIndex) -> None:
        with pytest.raises(ValueError, match="dimension"):
            index.upsert([UserPoint("a", [1.0, 0.0], 1, 10)])

    def test_k_beyond_matches_and_nonpositive_k(self, index: VectorIndex) -> None:
        index.upsert(random_points(5))
        assert len(index.search(unit(0), 100)) == 5
        assert index.search(unit(0), 0) == []

    def test_batched_upsert_beyond_one_request(self, index: VectorIndex) -> None:
        index.upsert(random_points(2500))
        index.flush()
        assert index.count() == 2500

    def test_search_many_equals_looping_search(self, index: VectorIndex) -> None:
        points = random_points(300, seed=1)
        index.upsert(points)
        index.flush()
        rng = np.random.default_rng(2)
        queries = [
            SearchQuery(points[i].vector, int(rng.integers(1, 20)), f"u{i}" if i % 2 else None, 1100 if i % 3 else None)
            for i in rng.choice(300, 25, replace=False)
        ] + [SearchQuery([0.0] * DIM, 5)]
        loop = [index.search(q.vector, q.k, q.exclude_user, q.min_last_ts) for q in queries]
        batch = index.search_many(queries)
        assert [users(r) for r in batch] == [users(r) for r in loop]
        for b, lp in zip(batch, loop, strict=True):
            assert [n.score for n in b] == pytest.approx([n.score for n in lp], abs=1e-5)

    def test_reopen_from_disk(self, tmp_path: Path) -> None:
        if self.reopen_url is None:
            pytest.skip("adapter keeps no state on disk")
        idx = self.open(tmp_path, self.reopen_url)
        idx.upsert(random_points(50))
        idx.delete(["u0"])
        idx.flush()
        expected = users(idx.search(unit(0), 10, exclude_user="u1", min_last_ts=1010))
        idx.close()
        with self.open(tmp_path, self.reopen_url) as again:
            assert again.count() == 49
            assert users(again.search(unit(0), 10, exclude_user="u1", min_last_ts=1010)) == expected
        with pytest.raises(ValueError):
            open_index(self.reopen_url.replace("{tmp}", str(tmp_path)), DIM + 1, tmp_path)


class TestEdgeIndex(IndexContract):
    url = "edge://"
    reopen_url = "edge://"


class TestClientIndex(IndexContract):
    url = "memory://"
    reopen_url = "qdrant-local://{tmp}/qdrant"


class TestExactIndex(IndexContract):
    url = "exact://"


def test_unknown_scheme_names_the_url(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bolt://x"):
        open_index("bolt://x", DIM, tmp_path)


def test_edge_absolute_path_and_options(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "shard"
    with open_index(f"edge://{target}?hnsw_ef=64", DIM, tmp_path / "state") as idx:
        idx.upsert(random_points(3))
    assert (target / "edge_config.json").exists()
    assert not (tmp_path / "state").exists()
    with pytest.raises(ValueError, match="unknown edge"):
        open_index("edge://?ef=3", DIM, tmp_path)


def test_server_url_parsing(tmp_path: Path) -> None:
    from agents.index.client import client_kwargs

    kwargs, collection, ef = client_kwargs("https://q.example:6333?collection=c1&api_key=k&hnsw_ef=200", tmp_path)
    assert kwargs == {"url": "https://q.example:6333", "api_key": "k", "prefer_grpc": False}
    assert (collection, ef) == ("c1", 200)
    kwargs, collection, _ = client_kwargs("http://localhost:6333", tmp_path, api_key="s")
    assert kwargs["api_key"] == "s" and collection == "coda_users"
    assert client_kwargs("qdrant-local://", tmp_path)[0] == {"path": str(tmp_path / "qdrant-local")}


def test_edge_hnsw_recall_at_10_vs_exact(tmp_path: Path) -> None:
    from ops.bench.knn import clustered_vectors

    n, dim = 5000, 64
    vectors = clustered_vectors(n, dim, seed=3)
    points = [UserPoint(f"u{i}", vectors[i], 1, i) for i in range(n)]
    queries = [SearchQuery(vectors[i], 10, f"u{i}", 500) for i in range(0, n, 50)]
    exact = open_index("exact://", dim, tmp_path)
    exact.upsert(points)
    # Tiny thresholds force an HNSW build and HNSW search; by default 5k users stay brute force.
    edge = open_index("edge://?indexing_threshold_kb=1&full_scan_threshold_kb=1&hnsw_ef=32", dim, tmp_path)
    try:
        edge.upsert(points)
        edge.flush()
        assert edge.info()["indexed_vectors"] == n  # type: ignore[attr-defined]
        recalls = [
            len(set(users(a)) & set(users(b))) / len(b)
            for a, b in zip(edge.search_many(queries), exact.search_many(queries), strict=True)
        ]
    finally:
        edge.close()
    assert np.mean(recalls) >= 0.95
