"""What the cloud's state must be after a chaos run, from the agents' own pure steps, and the comparisons
against what the run's topics hold."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.ingest import IngestHistory, build_samples
from core.privacy import user_pseudonym
from core.vectors import UserAccumulator, fold
from ops.audit.exports import RunRecords
from ops.replay.publish import DayPlan
from streams.schemas import BehaviourEvent
from streams.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Expected:
    """What the cloud must derive from the plans: samples per user and each user's vector."""

    vectors: dict[str, tuple[int, list[float]]]  # user pseudonym -> (count, mean vector)
    samples: dict[str, Any]  # sample id -> core.sample.Sample

    @property
    def sample_ids(self) -> set[str]:
        return set(self.samples)


def expected_state(plans: Sequence[DayPlan], settings: Settings) -> Expected:
    """Run the ingest and user-vector agents' pure steps over the plans, in replay order."""
    key, space = settings.pseudonym_key, settings.features
    histories: dict[str, IngestHistory] = {}
    users: dict[str, UserAccumulator] = {}
    ids: dict[str, Any] = {}
    for plan in plans:
        for _device, events in plan.by_device:
            by_user: dict[str, list[BehaviourEvent]] = {}
            for e in events:
                by_user.setdefault(e.user_id, []).append(e)
            for user_id, evs in by_user.items():
                user = user_pseudonym(key, user_id)
                samples, histories[user] = build_samples(user, evs, histories.get(user) or IngestHistory(), space)
                if samples:
                    users[user], _ = fold(users.get(user), samples, space, settings.match_window_days)
                    ids.update((s.sample_id, s) for s in samples)
    vectors = {u: (st.count, [t / st.count for t in st.total]) for u, st in users.items() if st.count}
    return Expected(vectors, ids)


def compare_vectors(run: RunRecords, expected: dict[str, tuple[int, list[float]]],
                    tol: float = 1e-9) -> dict[str, Any]:
    """Published vectors (newest per user) against `expected`: same users, counts and values."""
    missing = sorted(set(expected) - set(run.vectors))
    extra = sorted(set(run.vectors) - set(expected))
    wrong = []
    worst = 0.0
    for user in set(expected) & set(run.vectors):
        count, vector = expected[user]
        got = run.vectors[user]
        err = max((abs(a - b) for a, b in zip(vector, got.vector, strict=True)), default=0.0)
        worst = max(worst, err)
        if got.count != count or err > tol:
            wrong.append(user)
    return {"users": len(expected), "missing": missing[:5], "extra": extra[:5], "wrong": sorted(wrong)[:5],
            "max_abs_error": worst, "ok": not (missing or extra or wrong)}


def compare_samples(run: RunRecords, expected: Expected) -> dict[str, Any]:
    """The log's samples (first copy per id) against the pure replay's: same ids and the same features."""
    differ = [i for i, s in run.samples.items() if i in expected.samples and s != expected.samples[i]]
    return {"samples": len(run.samples), "expected": len(expected.samples),
            "missing": sorted(set(expected.samples) - set(run.samples))[:5],
            "extra": sorted(set(run.samples) - set(expected.samples))[:5],
            "different_features": len(differ), "example": differ[:3],
            "ok": set(run.samples) == set(expected.samples) and not differ}


def distinct_letters(run: RunRecords, topic: str) -> dict[tuple[int, int], Any]:
    """Dead letters of `topic` by source (partition, offset): a redelivered bad message counts once."""
    return {(d.partition, d.offset): d for d in run.dead if d.topic == topic}
