"""Tests for core.metrics: AUC with ties, the one-class fallback, logloss, GAUC."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.metrics import auc, auc_or_fallback, gauc, logloss


def brute_force_auc(labels: list[int], scores: list[float]) -> float | None:
    """O(n²) reference: a positive above a negative counts 1, a tie 1/2."""
    pos = [s for y, s in zip(labels, scores, strict=True) if y]
    neg = [s for y, s in zip(labels, scores, strict=True) if not y]
    if not pos or not neg:
        return None
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 4)), max_size=40))
def test_auc_matches_brute_force_with_ties(rows: list[tuple[int, int]]) -> None:
    """Rank-based AUC equals the pairwise count on small integer scores full of ties."""
    labels = [y for y, _ in rows]
    scores = [s / 4 for _, s in rows]
    expected = brute_force_auc(labels, scores)
    got = auc(labels, scores)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1e-12)


def test_auc_matches_brute_force_on_continuous_scores() -> None:
    """Rank-based AUC equals the pairwise count on random continuous scores."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200).tolist()
    scores = rng.random(200).round(2).tolist()
    assert auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)


def test_auc_known_values() -> None:
    """Perfect ranking is 1, reversed is 0, all tied is 0.5."""
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_auc_is_none_with_one_class_or_no_samples() -> None:
    """AUC is undefined without both classes."""
    assert auc([1, 1, 1], [0.1, 0.5, 0.9]) is None
    assert auc([0], [0.3]) is None
    assert auc([], []) is None


def test_auc_rejects_length_mismatch() -> None:
    """Labels and scores must pair up."""
    with pytest.raises(ValueError):
        auc([0, 1], [0.5])


def test_fallback_is_auc_when_both_classes_present() -> None:
    """With both classes the gate metric is plain AUC."""
    labels, scores = [0, 1, 0, 1], [0.3, 0.6, 0.7, 0.9]
    assert auc_or_fallback(labels, scores) == auc(labels, scores)


def test_fallback_with_one_class_is_geometric_mean_likelihood() -> None:
    """With one class the metric is exp(−logloss): in (0, 1] and higher for a better fit."""
    labels = [1, 1, 1]
    worse, better = [0.4, 0.5, 0.6], [0.5, 0.6, 0.7]
    assert auc_or_fallback(labels, worse) == pytest.approx(math.exp(-logloss(labels, worse)))
    assert 0.0 < auc_or_fallback(labels, worse) < auc_or_fallback(labels, better) <= 1.0
    assert auc_or_fallback([0, 0], [0.1, 0.2]) > auc_or_fallback([0, 0], [0.3, 0.2])


def test_fallback_rejects_no_samples() -> None:
    """No validation samples means no metric at all."""
    with pytest.raises(ValueError):
        auc_or_fallback([], [])


def test_logloss_known_value_and_clipping() -> None:
    """Logloss matches the formula and stays finite for certain wrong predictions."""
    assert logloss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert math.isfinite(logloss([1, 0], [0.0, 1.0]))


def test_gauc_is_impression_weighted_over_users_with_both_classes() -> None:
    """GAUC weights each user's AUC by impressions and skips one-class users."""
    per_user = {
        "a": ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]),  # AUC 1, 4 impressions
        "b": ([1, 0], [0.2, 0.9]),  # AUC 0, 2 impressions
        "c": ([1, 1, 1], [0.1, 0.2, 0.3]),  # one class: ignored
    }
    assert gauc(per_user) == pytest.approx(4 / 6)


def test_gauc_is_none_without_any_two_class_user() -> None:
    """GAUC is undefined when no user has both classes."""
    assert gauc({"a": ([1], [0.5]), "b": ([0, 0], [0.1, 0.2])}) is None
    assert gauc({}) is None
