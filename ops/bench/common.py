"""Shared bench plumbing: a broker for the run, machine facts, percentiles, JSON + markdown output."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from streams.settings import Settings


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None}


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    arr = np.asarray(values, dtype=float)
    return {"n": int(arr.size), "p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)),
            "p99": float(np.percentile(arr, 99)), "mean": float(arr.mean())}


@contextlib.contextmanager
def broker_for(settings: Settings, scratch: Path) -> Iterator[Settings]:
    """Use the configured or running broker; otherwise start a private Tansu for this bench."""
    from ops.stack import broker as stack
    from streams.kafka import BrokerUnavailable, bootstrap_servers

    try:
        yield settings.replace(bootstrap=bootstrap_servers(settings))
        return
    except BrokerUnavailable:
        pass
    private = settings.replace(state_dir=scratch / "broker")
    state = stack.start_broker(private)
    state.save(stack.stack_file(private))
    try:
        yield settings.replace(bootstrap=state.bootstrap)
    finally:
        stack.down(private)


def write_report(path: Path, suite: str, result: dict[str, Any], markdown: str) -> None:
    """FILE.json and a FILE.md summary beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"suite": suite, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(),
           **result}
    path.write_text(json.dumps(doc, indent=1, default=float))
    path.with_suffix(".md").write_text(markdown)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(v: object) -> str:
        return f"{v:,.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Usage:
    """RSS and CPU seconds of some processes and their children, sampled over a run.

    The listed processes' main threads are counted apart as well: in a fleet or the plain loop
    that is the event loop (decoding, bookkeeping, torch jobs), the rest their SQLite threads.
    """

    procs: list[psutil.Process]
    rss0: int = 0
    peak: int = 0
    cpu0: float = 0.0
    main0: float = 0.0

    def start(self) -> None:
        self.rss0 = self.peak = self.rss()
        self.cpu0 = self.cpu()
        self.main0 = self.main_thread_cpu()

    def tree(self) -> list[psutil.Process]:
        out: dict[int, psutil.Process] = {}  # by pid: a child of one listed process may be listed too
        for p in self.procs:
            try:
                out.update((q.pid, q) for q in (p, *p.children(recursive=True)))
            except psutil.NoSuchProcess:
                continue
        return list(out.values())

    def rss(self) -> int:
        return sum(_safe(lambda q=q: q.memory_info().rss) for q in self.tree())

    def cpu(self) -> float:
        return sum(_safe(lambda q=q: sum(q.cpu_times()[:2])) for q in self.tree())

    def main_thread_cpu(self) -> float:
        return sum(_safe(lambda p=p: _main_thread_cpu(p)) for p in self.procs)

    def sample(self) -> None:
        self.peak = max(self.peak, self.rss())

    def report(self, devices: int, seconds: float) -> dict[str, Any]:
        return {"devices_timed": devices, "devices_per_s": devices / seconds, "seconds": seconds,
                "cpu_s_per_device": (self.cpu() - self.cpu0) / devices,
                "main_thread_cpu_s_per_device": (self.main_thread_cpu() - self.main0) / devices,
                "rss_mb_before": self.rss0 / 2**20, "rss_mb_peak": self.peak / 2**20,
                "mb_per_device": (self.peak - self.rss0) / 2**20 / devices}


def _main_thread_cpu(p: psutil.Process) -> float:
    """User + system seconds of the process's main thread (its thread id is its pid)."""
    return next((t.user_time + t.system_time for t in p.threads() if t.id == p.pid), 0.0)


def _safe(read: Any) -> float:
    try:
        return float(read())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0
