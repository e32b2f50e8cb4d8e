"""Cloud-only replay through real worker processes: envelopes up, day ticks, device pulls, barriers."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agents.worker import worker_dir
from ops.replay.publish import DAY, DayPlan, Publisher
from ops.stack.pipeline import Processes, barrier
from streams.kafka import ensure_topics
from streams.schemas import PullRequest
from streams.settings import Settings
from streams.topics import Topics


@dataclass
class CloudRun:
    settings: Settings
    topics: Topics
    workers: int = 1
    pulls_per_day: int = 2
    garbage: Sequence[bytes] = ()  # malformed up-tunnel messages mixed into the first day
    timings: dict[str, float] = field(default_factory=dict)

    async def run(self, plans: Sequence[DayPlan]) -> dict[str, Any]:
        await ensure_topics(self.settings, self.topics)
        procs = Processes(self.settings)
        started = time.monotonic()
        try:
            for i in range(self.workers):
                procs.spawn("worker", str(i))
            async with Publisher(self.settings, self.topics) as pub:
                for n, plan in enumerate(plans):
                    await self._day(pub, plan, procs, first=n == 0)
            self.timings["replay_s"] = time.monotonic() - started
            time.sleep(1.5)  # let the workers' 1 s stats timer write its last figures
            return self.worker_stats()
        finally:
            procs.stop()

    async def _day(self, pub: Publisher, plan: DayPlan, procs: Processes, first: bool) -> None:
        await pub.up(plan)
        if first:
            for raw in self.garbage:
                await pub.send_raw("up", b"fuzz", raw)
        await barrier(self.settings, self.topics, self.workers, False, procs)
        await pub.day_end("samples", plan.day)
        await barrier(self.settings, self.topics, self.workers, False, procs)
        for round_ in range(self.pulls_per_day):
            for device, events in plan.by_device:
                ts = plan.day * DAY + DAY - 1
                request = PullRequest(device, events[0].user_id, ts, f"pull-{plan.day}-{round_}-{device}", 12)
                await pub.send("up", device.encode(), request)
            await barrier(self.settings, self.topics, self.workers, False, procs)

    def worker_stats(self) -> dict[str, Any]:
        return merged_worker_stats(self.settings, self.workers)


def merged_worker_stats(settings: Settings, workers: int) -> dict[str, Any]:
    """Every worker's stats.json, summed per stage (`points`, a gauge, takes the largest)."""
    merged: dict[str, Any] = {}
    for i in range(workers):
        path = worker_dir(settings, str(i)) / "stats.json"
        stats = json.loads(path.read_text()) if path.exists() else {}
        for stage, counts in stats.items():
            if isinstance(counts, dict):
                bucket = merged.setdefault(stage, {})
                for k, v in counts.items():
                    if k == "points":
                        bucket[k] = max(bucket.get(k, 0), v)
                    elif isinstance(v, int | float):
                        bucket[k] = bucket.get(k, 0) + v
    return merged
