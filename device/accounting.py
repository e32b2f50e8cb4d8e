"""Cost accounting for device work: one record per filter, training and round, and fleet-wide summaries."""

from __future__ import annotations

import resource
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil


@dataclass(frozen=True, slots=True)
class RoundRecord:
    """Cost of one piece of device work. `kind`: filter | train | round (filters since last train + train)."""

    device: str
    kind: str
    wall_ms: float
    cpu_ms: float
    rss_mb: float
    bytes: int  # payload bytes downloaded for it
    n_in: int  # filter: matched samples; train: training samples
    n_out: int  # filter: kept; train: accepted steps
    ts: int  # device event time


def percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


class Accounting:
    """Recent round records (bounded) and running totals, for `Fleet.stats()`."""

    def __init__(self, keep: int = 20_000) -> None:
        self.records: deque[RoundRecord] = deque(maxlen=keep)
        self.totals: Counter[str] = Counter()
        self.queue_ms: deque[float] = deque(maxlen=keep)  # executor wait before each job
        self._proc = psutil.Process()

    def rss_mb(self) -> float:
        return self._proc.memory_info().rss / 2**20

    def queued(self, ms: float) -> None:
        self.queue_ms.append(ms)

    def record(self, rec: RoundRecord) -> None:
        self.records.append(rec)
        self.totals[f"{rec.kind}s"] += 1
        self.totals[f"{rec.kind}_bytes"] += rec.bytes

    def for_device(self, pseudonym: str) -> list[RoundRecord]:
        return [r for r in self.records if r.device == pseudonym]

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "totals": dict(self.totals),
            "rss_mb": round(self.rss_mb(), 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        for kind in ("filter", "train", "round"):
            recs = [r for r in self.records if r.kind == kind]
            walls, cpus = [r.wall_ms for r in recs], [r.cpu_ms for r in recs]
            out[kind] = {
                "n": len(recs),
                "wall_ms_p50": _round(percentile(walls, 50)),
                "wall_ms_p95": _round(percentile(walls, 95)),
                "cpu_ms_p50": _round(percentile(cpus, 50)),
                "cpu_ms_p95": _round(percentile(cpus, 95)),
                "bytes_mean": _round(float(np.mean([r.bytes for r in recs])) if recs else None),
            }
        queue = list(self.queue_ms)
        out["executor_queue_ms"] = {
            "p50": _round(percentile(queue, 50)),
            "p95": _round(percentile(queue, 95)),
        }
        return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)
