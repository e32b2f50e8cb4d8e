"""Invariants of a run, checked from its exported records: vector parity, KNN recall, batch rules."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

from core.features import FeatureSpace, user_feature
from core.sample import DAY
from core.vectors import mean_vector
from ops.audit.exports import RunRecords


def vector_parity(run: RunRecords, space: FeatureSpace) -> dict[str, Any]:
    """Every published user vector equals the batch mean of its samples' features."""
    by_user: dict[str, list[list[float]]] = defaultdict(list)
    for s in run.samples.values():
        by_user[s.user].append(user_feature(s, space))
    worst, mismatched = 0.0, []
    for user, vector in run.vectors.items():
        expected = mean_vector(by_user.get(user, []))
        err = float(np.max(np.abs(np.array(expected) - np.array(vector.vector)))) if expected else 1.0
        count_ok = vector.count == len(by_user.get(user, []))
        worst = max(worst, err)
        if err > 1e-5 or not count_ok:
            mismatched.append(user)
    return {"users": len(run.vectors), "max_abs_error": worst, "mismatched": mismatched[:10],
            "ok": not mismatched and len(run.vectors) == len(by_user)}


def exact_neighbours(run: RunRecords, space: FeatureSpace, asof_day: int, window_days: int,
                     k: int) -> dict[str, list[str]]:
    """Brute-force cosine KNN over the vectors as they stood at the end of `asof_day`."""
    by_user: dict[str, list[list[float]]] = defaultdict(list)
    last_ts: dict[str, int] = {}
    for s in run.samples.values():
        if s.ts // DAY <= asof_day:
            by_user[s.user].append(user_feature(s, space))
            last_ts[s.user] = max(last_ts.get(s.user, 0), s.ts)
    users = sorted(by_user)
    matrix = np.array([mean_vector(by_user[u]) for u in users], dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    unit = matrix / np.where(norms == 0, 1, norms)
    return {"users": users, "unit": unit, "last_ts": last_ts}  # type: ignore[return-value]


def knn_recall(run: RunRecords, space: FeatureSpace, window_days: int, k: int,
               min_recall: float = 0.9) -> dict[str, Any]:
    """Recall@K of each published match against exact brute force; none, or a low mean, fails."""
    cache: dict[int, dict[str, Any]] = {}
    recalls = []
    for m in run.matches:
        ref = cache.setdefault(m.asof_day, exact_neighbours(run, space, m.asof_day, window_days, k))
        users = ref["users"]
        if m.user not in users:
            continue
        since = (m.day - window_days + 1) * DAY
        eligible = np.array([u != m.user and ref["last_ts"][u] >= since for u in users])
        scores = ref["unit"] @ ref["unit"][users.index(m.user)]
        scores = np.where(eligible, scores, -np.inf)
        order = np.argsort(-scores, kind="stable")[: min(k, int(eligible.sum()))]
        truth = {users[i] for i in order}
        if truth:
            # ties at the K-th score make several exact answers valid: count any tied user as a hit
            kth = scores[order[-1]]
            tied = {users[i] for i in np.flatnonzero(np.isclose(scores, kth, atol=1e-9))}
            hits = sum(1 for n in m.neighbours if n in truth or n in tied)
            recalls.append(min(1.0, hits / len(truth)))
    mean = float(np.mean(recalls)) if recalls else 0.0
    problem = ("no matches were published" if not run.matches else
               "no match could be checked (its user has no samples)" if not recalls else
               f"mean recall {mean:.3f} below {min_recall}" if mean < min_recall else "")
    return {"matches": len(run.matches), "checked": len(recalls), "mean_recall": mean,
            "min_recall": float(np.min(recalls)) if recalls else 0.0, "threshold": min_recall,
            "ok": not problem, **({"problem": problem} if problem else {})}


def vector_norms(run: RunRecords, max_zero_share: float = 0.5) -> dict[str, Any]:
    """Users whose vector is all zeros (no item tags reached the feature): most of them is a failure."""
    zero = sorted(u for u, v in run.vectors.items() if not any(v.vector))
    share = len(zero) / len(run.vectors) if run.vectors else 1.0
    problem = ("no user vectors were published" if not run.vectors else
               f"{len(zero)} of {len(run.vectors)} users have a zero vector (do the events carry item_tags?)"
               if share > max_zero_share else "")
    return {"users": len(run.vectors), "zero_norm": len(zero), "zero_share": round(share, 4),
            "threshold": max_zero_share, "examples": zero[:5], "ok": not problem,
            **({"problem": problem} if problem else {})}


def batch_rules(run: RunRecords, batch_size: int, batch_max: int, per_day: int, pulls: int = 0) -> dict[str, Any]:
    """25–40 per batch except a request's final one; no repeats; ≤ quota; only neighbours' samples.

    `pulls`: pull requests devices sent; pulls answered by no batch at all are a failure.
    """
    problems: Counter[str] = Counter()
    per_request: dict[str, list[int]] = defaultdict(list)
    seen_by_device: dict[str, set[str]] = defaultdict(set)
    per_device_day: Counter[tuple[str, int]] = Counter()
    neighbours = {(m.user, m.day): set(m.neighbours) for m in run.matches}
    latest_match: dict[str, list[tuple[int, set[str]]]] = defaultdict(list)
    for (user, day), ns in neighbours.items():
        latest_match[user].append((day, ns))
    for b in run.batches:
        per_request[b.batch_id.rsplit("-", 1)[0]].append(len(b.sample_ids))
        per_device_day[(b.device, b.day)] += 1
        if seen_by_device[b.device] & set(b.sample_ids):
            problems["repeat_sample"] += 1
        seen_by_device[b.device] |= set(b.sample_ids)
        allowed = set().union(*(ns for day, ns in latest_match[b.user] if day == b.day)) if latest_match[b.user] else set()
        if any(o == b.user for o in b.sample_owners):
            problems["own_sample"] += 1
        if any(o not in allowed for o in b.sample_owners):
            problems["not_a_neighbour"] += 1
    for sizes in per_request.values():
        if any(s > batch_max for s in sizes) or any(s < batch_size for s in sizes[:-1]):
            problems["batch_size"] += 1
    problems["over_quota"] = sum(1 for n in per_device_day.values() if n > per_day)
    problems["no_batches_though_devices_pulled"] = pulls if pulls and not run.batches else 0
    sizes = [len(b.sample_ids) for b in run.batches]
    return {"batches": len(run.batches), "devices": len(seen_by_device), "pulls": pulls,
            "size_min": min(sizes, default=0), "size_max": max(sizes, default=0),
            "problems": {k: v for k, v in problems.items() if v}, "ok": not any(problems.values())}
