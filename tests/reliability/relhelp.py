"""Reliability test helpers: canary-marked events, per-run namespaces, the reference run's record."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ops.audit.exports import RunRecords
from ops.datasets import load_dataset
from ops.replay.publish import DayPlan
from streams.settings import Settings
from streams.topics import Topics

PULL_BATCHES = 1  # one batch per pull: later pulls of a day get fresh samples, so repeats would show
CANARY = "Cnry"  # every raw id and profile value of the reference data contains this marker


def canary_events() -> list[dict[str, Any]]:
    """Synthetic events whose user ids, device ids and profile values are unmistakable strings."""
    dataset = load_dataset("synthetic", n_users=24, seed=11, days=2, events_per_user=(6, 12))
    out = []
    for e in dataset.events:
        user = f"{CANARY}User-{e['user_id']}-q7"
        profile = {f: f"{CANARY}{f.title()}-{v}" for f, v in (e.get("profile") or {}).items()}
        out.append({**e, "user_id": user, "device_id": f"{CANARY}Phone-{e['user_id']}-z3", "profile": profile})
    return out


def namespace(broker: str, root: Path, name: str) -> Settings:
    """Settings of one run: its own topics, groups and state directory on the session broker."""
    prefix = f"rel{os.getpid()}-{name}"
    return Settings(state_dir=root / name, bootstrap=broker, topic_prefix=prefix, app_id=prefix,
                    rebalance_timeout_s=3.0, session_timeout_s=6.0, k_neighbours=8, index_url="edge://")


@dataclass
class Reference:
    """The uninterrupted, clean run every chaos run is compared with."""

    settings: Settings
    topics: Topics
    plans: list[DayPlan]
    events: list[dict[str, Any]]
    run: RunRecords
    stats: dict[str, Any]
