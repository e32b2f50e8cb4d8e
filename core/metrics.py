"""Ranking and calibration metrics (AUC, logloss, GAUC) and the validation gate's metric."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

LOGLOSS_EPS = 1e-7


def _arrays(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {p.size}")
    return y, p


def auc(labels: ArrayLike, scores: ArrayLike) -> float | None:
    """ROC AUC from average ranks (Mann–Whitney U), ties counting one half; None with one class."""
    y, p = _arrays(labels, scores)
    pos = y > 0.5
    n_pos = int(pos.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    # 1-based average rank of each distinct score: ranks before it, plus the middle of its tie run
    avg_rank = np.cumsum(counts) - counts + (counts + 1) / 2.0
    rank_sum = float(avg_rank[inverse][pos].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def logloss(labels: ArrayLike, scores: ArrayLike, eps: float = LOGLOSS_EPS) -> float:
    """Mean binary cross-entropy of probabilities `scores`, clipped to [eps, 1 − eps]."""
    y, p = _arrays(labels, scores)
    if y.size == 0:
        raise ValueError("logloss of no samples")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def auc_or_fallback(labels: ArrayLike, scores: ArrayLike) -> float:
    """AUC, or exp(−logloss) when the samples hold one class only (AUC is then undefined).

    exp(−logloss) is the geometric mean of the probability the model gives each observed label:
    in (0, 1] like AUC, and strictly monotone in logloss, so "the metric improved" still means
    "the model fits these labels better", and every small improvement counts. Accuracy at 0.5
    was rejected: it is a step function that almost never moves after one mini-batch, so a gate
    built on it would reject nearly every step. The two scales are not comparable with each
    other; a gate compares values on one fixed validation set, whose class mix never changes,
    so it always compares like with like. Raises ValueError on no samples.
    """
    value = auc(labels, scores)
    return value if value is not None else math.exp(-logloss(labels, scores))


def gauc(per_user: Mapping[str, tuple[ArrayLike, ArrayLike]]) -> float | None:
    """Impression-weighted mean of per-user AUC over users with both classes; None if there are none."""
    weighted, impressions = 0.0, 0
    for labels, scores in per_user.values():
        value = auc(labels, scores)
        if value is None:
            continue
        n = int(np.asarray(labels).size)
        weighted += value * n
        impressions += n
    return weighted / impressions if impressions else None
