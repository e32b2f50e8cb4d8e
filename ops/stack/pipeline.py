"""A running namespace: worker and fleet processes, their consumer groups, and the day barrier."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from streams.settings import Settings
from streams.topicio import wait_quiet
from streams.topics import Topics

log = logging.getLogger(__name__)

WORKER_TOPICS = ("up", "samples", "match-requests", "neighbour-queries", "gather")
FLEET_TOPICS = ("actions", "down")


def subscriptions(settings: Settings, topics: Topics, workers: int, fleets: bool) -> dict[str, list[str]]:
    """Consumer group → topics it reads: what the day barrier waits on."""
    subs = {settings.app_id: [topics.name(t) for t in WORKER_TOPICS]}
    subs.update({f"{settings.app_id}-index-{i}": [topics.name("user-vectors")] for i in range(workers)})
    if fleets:
        subs[f"{settings.app_id}-fleet"] = [topics.name(t) for t in FLEET_TOPICS]
    return subs


@dataclass
class Processes:
    """Child processes started by this run; stopped (and only they) on exit."""

    settings: Settings
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, role: str, ident: str, *extra: str) -> subprocess.Popen[bytes]:
        log_dir = self.settings.state_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1"}
        with open(log_dir / f"{role}-{ident}.log", "ab") as out:
            proc = subprocess.Popen(  # noqa: S603 - our own CLI
                [sys.executable, "-m", "ops.cli", role, "--id", ident, *extra],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        self.procs.append(proc)
        return proc

    def check(self) -> None:
        """Fail loudly when a child died: its log says why."""
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"child {proc.args[3:6]} exited with {proc.returncode}; "
                                   f"see {self.settings.state_dir / 'logs'}")

    def stop(self, timeout_s: float = 20.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


async def barrier(settings: Settings, topics: Topics, workers: int, fleets: bool, procs: Processes | None = None,
                  timeout_s: float = 900) -> float:
    """Wait until every consumer group of the namespace has caught up (and stays caught up)."""
    if procs is not None:
        procs.check()
    return await wait_quiet(settings, subscriptions(settings, topics, workers, fleets), timeout_s)


def worker_logs(settings: Settings) -> Path:
    return settings.state_dir / "logs"
