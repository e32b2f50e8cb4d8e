"""Invariants of a run, checked from its exported records: vector parity, KNN recall, batch rules."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.features import FeatureSpace
from core.sample import DAY
from ops.audit.exports import RunRecords
from ops.audit.features import FeatureMatrix, feature_matrix


def vector_parity(run: RunRecords, space: FeatureSpace,
                  matrix: FeatureMatrix | None = None) -> dict[str, Any]:
    """Every published user vector equals the batch mean of its samples' features.

    `matrix`: the samples' feature matrix, when the caller has it (else built here).
    """
    matrix = matrix or feature_matrix(run.samples.values(), space)
    blocks = {user: rows for user, rows, _ in matrix.blocks()}
    worst, mismatched = 0.0, []
    for user, vector in run.vectors.items():
        rows = blocks.get(user)
        err = float(np.max(np.abs(matrix.mean(rows) - np.array(vector.vector)))) if rows is not None else 1.0
        count_ok = vector.count == (len(rows) if rows is not None else 0)
        worst = max(worst, err)
        if err > 1e-5 or not count_ok:
            mismatched.append(user)
    return {"users": len(run.vectors), "max_abs_error": worst, "mismatched": mismatched[:10],
            "ok": not mismatched and len(run.vectors) == len(blocks)}


@dataclass(frozen=True)
class Reference:
    """The users' unit vectors as they stood at the end of a day, and each one's newest sample time."""

    users: list[str]  # sorted, one per row of `unit` and `last_ts`
    rows: dict[str, int]
    unit: np.ndarray
    last_ts: np.ndarray


def exact_neighbours(matrix: FeatureMatrix, asof_day: int) -> Reference:
    """Brute-force cosine KNN's input: the vectors as they stood at the end of `asof_day`."""
    blocks = list(matrix.blocks(asof_day))
    width = matrix.values.shape[1]
    means = np.array([matrix.mean(rows) for _, rows, _ in blocks]).reshape(len(blocks), width)
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    users = [user for user, _, _ in blocks]
    return Reference(users, {user: i for i, user in enumerate(users)}, means / np.where(norms == 0, 1, norms),
                     np.array([last for _, _, last in blocks], dtype=np.int64))


def knn_recall(run: RunRecords, space: FeatureSpace, window_days: int, k: int,
               min_recall: float = 0.9, matrix: FeatureMatrix | None = None) -> dict[str, Any]:
    """Recall@K of each published match against exact brute force; none, or a low mean, fails."""
    matrix = matrix or feature_matrix(run.samples.values(), space)
    cache: dict[int, Reference] = {}
    recalls = []
    for m in run.matches:
        if m.asof_day not in cache:  # one reference per day, built only when a match first needs it
            cache[m.asof_day] = exact_neighbours(matrix, m.asof_day)
        ref = cache[m.asof_day]
        row = ref.rows.get(m.user)
        if row is None:
            continue
        eligible = ref.last_ts >= (m.day - window_days + 1) * DAY
        eligible[row] = False
        scores = np.where(eligible, ref.unit @ ref.unit[row], -np.inf)
        order = np.argsort(-scores, kind="stable")[: min(k, int(eligible.sum()))]
        truth = {ref.users[i] for i in order}
        if truth:
            # ties at the K-th score make several exact answers valid: count any tied user as a hit
            kth = scores[order[-1]]
            tied = {ref.users[i] for i in np.flatnonzero(np.isclose(scores, kth, atol=1e-9))}
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
