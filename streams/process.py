"""Process-wide tuning shared by the long-running processes: cloud workers and device fleets."""

from __future__ import annotations

import gc


def tune_gc() -> None:
    """Run the cyclic collector far less often than Python's default (every 700 allocations).

    Each message allocates thousands of short-lived lists (msgpack, records), so the default
    collected every few messages, and the older generations rescanned every table row: the
    collector was most of msgpack's decode time in a worker (SampleBatch decode 45 -> 28 us per
    sample). A fleet's heap grows with the devices it hosts and each torch job allocates freely:
    a 1,000-device cycle spent 1.26 s in it by default, 0.40 s with this (docs/benchmarks.md).
    Freezing moves the objects of imports and start-up (torch, the initial model) out of every later scan.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
