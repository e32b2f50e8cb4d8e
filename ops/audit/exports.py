"""Exports for inspection (vectors, samples, matches, batches) read back from the namespace's topics."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.features import FeatureSpace
from core.sample import Sample
from ops.audit.features import FeatureMatrix, feature_matrix, rounded_rows
from streams.schemas import (
    BatchRecord,
    DeadLetter,
    DownBatch,
    MatchResult,
    SampleBatch,
    SampleBatchV1,
    UserVector,
)
from streams.settings import Settings
from streams.topicio import read_records
from streams.topics import Topics


@dataclass
class RunRecords:
    """What a run left on its topics, deduplicated the way a reader of the log must."""

    vectors: dict[str, UserVector] = field(default_factory=dict)  # newest per user (reader-side compaction)
    samples: dict[str, Sample] = field(default_factory=dict)  # by sample id
    matches: list[MatchResult] = field(default_factory=list)
    batches: list[BatchRecord] = field(default_factory=list)
    down: list[DownBatch] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


async def collect(settings: Settings, topics: Topics) -> RunRecords:
    run = RunRecords()
    for r in await read_records(settings, topics.name("user-vectors")):
        if isinstance(r, UserVector):
            run.vectors[r.user] = r
    for r in await read_records(settings, topics.name("samples")):
        if isinstance(r, SampleBatch | SampleBatchV1):
            for s in r.to_samples():
                run.samples.setdefault(s.sample_id, s)
    run.matches = [r for r in await read_records(settings, topics.name("matches")) if isinstance(r, MatchResult)]
    run.batches = [r for r in await read_records(settings, topics.name("batch-log")) if isinstance(r, BatchRecord)]
    run.down = [r for r in await read_records(settings, topics.name("down")) if isinstance(r, DownBatch)]
    run.dead = [r for r in await read_records(settings, topics.name("dead-letters")) if isinstance(r, DeadLetter)]
    return run


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
            n += 1
    return n


def write_exports(run: RunRecords, out: Path, space: FeatureSpace,
                  matrix: FeatureMatrix | None = None) -> dict[str, int]:
    """DIR/vectors.jsonl, samples.jsonl, matches.jsonl, batches.jsonl; returns row counts.

    `matrix`: the samples' feature matrix when the caller has built it already (the checks read it too).
    """
    out.mkdir(parents=True, exist_ok=True)
    matrix = matrix or feature_matrix(run.samples.values(), space)
    return {
        "vectors": write_jsonl(out / "vectors.jsonl", (
            {"user": v.user, "vector": [round(x, 8) for x in v.vector], "count": v.count}
            for v in sorted(run.vectors.values(), key=lambda v: v.user))),
        "samples": write_jsonl(out / "samples.jsonl", (
            {"sample_id": s.sample_id, "user": s.user, "ts": s.ts, "feature": feature}
            for s, feature in zip(matrix.samples, rounded_rows(matrix), strict=True))),  # (user, ts, id)
        "matches": write_jsonl(out / "matches.jsonl", (
            {"user": m.user, "day": m.day, "neighbours": m.neighbours, "scores": m.scores, "asof_day": m.asof_day}
            for m in run.matches)),
        "batches": write_jsonl(out / "batches.jsonl", (
            {"device": b.device, "user": b.user, "day": b.day, "batch_id": b.batch_id,
             "sample_ids": b.sample_ids, "sample_owners": b.sample_owners, "bytes": b.bytes}
            for b in run.batches)),
    }
