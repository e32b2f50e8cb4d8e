"""`coda bench match`: KNN latency and recall@K — Qdrant Edge vs qdrant-client local mode vs exact numpy."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ops.bench.common import table, write_report

ADAPTERS = ["edge://", "memory://", "exact://"]


def run(out: Path, quick: bool, dim: int = 64, k: int = 100, large: bool = False) -> dict[str, Any]:
    """Default sizes fit the 5-minute budget; `large` adds 1M users (Edge's HNSW build alone ~7 min here)."""
    from ops.bench.knn import bench_match

    sizes = [2_000, 10_000] if quick else [10_000, 100_000] + ([1_000_000] if large else [])
    queries = 50 if quick else 300
    results = []
    for n in sizes:
        adapters = ADAPTERS if n <= 100_000 else ["edge://", "exact://"]
        print(f"[bench match] {n:,} users × {dim} dims: {', '.join(adapters)}", file=sys.stderr, flush=True)
        results.append(bench_match(n, dim, k, queries, adapters, seed=0, slow_query_cap=20 if quick else 50))
    rows = []
    for r in results:
        for url, a in r["adapters"].items():
            rows.append([f"{r['n_users']:,}", url, a.get("p50_ms", float("nan")), a.get("p99_ms", float("nan")),
                         a.get("recall", float("nan")), a.get("build_s", float("nan"))])
    md = ("# bench match\n\nKNN (k=%d, cosine, 7-day window filter, the asker excluded) on clustered "
          "tag-histogram-like vectors; recall against exact brute force on the same data.\n\n" % k)
    md += table(["users", "adapter", "p50 ms", "p99 ms", f"recall@{k}", "build s"], rows) + "\n"
    result = {"k": k, "dim": dim, "quick": quick, "runs": results,
              "targets": {"recall_at_100": 0.95, "p99_ms_at_100k": 5.0}}
    write_report(out, "match", result, md)
    return result
