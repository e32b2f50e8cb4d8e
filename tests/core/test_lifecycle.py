"""Tests for core.lifecycle: sample ages on a fake event-time clock, roles, expiry and forced cleanup."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from core import lifecycle
from core.lifecycle import DAY, LocalUse, Row, cleanup_local, cleanup_outside, local_use, plan_insert

NOW = 1_700_006_400  # a day boundary (1_700_006_400 // 86_400 = 19_676): the fake clock


@dataclass(frozen=True)
class S:
    ts: int
    name: str = ""


def test_ages_are_whole_event_time_days() -> None:
    """A sample from 23:59 yesterday is one day old at 00:01 today; a future ts counts as today."""
    assert lifecycle.age_days(NOW + 60, NOW - 60) == 1
    assert lifecycle.age_days(NOW + DAY - 1, NOW) == 0
    assert lifecycle.age_days(NOW, NOW + 5 * DAY) == 0


def test_local_use_boundaries() -> None:
    """age ≤ t validates, t < age ≤ t' trains, age > t' expires (t = 3, t' = 7)."""
    uses = [local_use(NOW, NOW - age * DAY, 3, 7) for age in range(10)]
    assert uses == [LocalUse.VALIDATE] * 4 + [LocalUse.TRAIN] * 4 + [LocalUse.EXPIRED] * 2


@given(
    now=st.integers(10 * DAY, 10**10),
    back=st.integers(0, 20 * DAY),
    t=st.integers(0, 5),
    extra=st.integers(0, 5),
)
def test_cutoffs_agree_with_local_use(now: int, back: int, t: int, extra: int) -> None:
    """The SQL thresholds classify every ts exactly as `local_use` does."""
    t2 = t + extra
    ts = now - back
    c = lifecycle.cutoffs(now, t, t2)
    by_cutoff = (
        LocalUse.VALIDATE
        if ts >= c.validate_from
        else LocalUse.TRAIN
        if ts >= c.keep_from
        else LocalUse.EXPIRED
    )
    assert by_cutoff == local_use(now, ts, t, t2)


def test_split_local_keeps_order_and_classifier_is_both_live_splits() -> None:
    """The classifier's positives are validation + training samples, never expired ones."""
    samples = [S(NOW - age * DAY, f"a{age}") for age in (9, 5, 0, 4, 2, 8)]
    split = lifecycle.split_local(samples, NOW, 3, 7)
    assert [s.name for s in split.validate] == ["a0", "a2"]
    assert [s.name for s in split.train] == ["a5", "a4"]
    assert [s.name for s in split.expired] == ["a9", "a8"]
    assert {s.name for s in split.classifier} == {"a0", "a2", "a5", "a4"}


def test_after_filter_deletes_negatives_and_low_scores() -> None:
    """Classifier negatives go after training; scores < σ are dropped; σ itself is kept."""
    outcome = lifecycle.after_filter(["n1", "n2"], {"a": 0.1, "b": 0.2, "c": 0.9}, 0.2)
    assert sorted(outcome.delete) == ["a", "n1", "n2"]
    assert outcome.keep == {"b": 0.2, "c": 0.9}
    assert lifecycle.after_training(["b", "c", "b"]) == ["b", "c"]


def test_cleanup_outside_drops_lowest_scores_unscored_as_zero() -> None:
    """Unscored rows (score 0) go first, then the lowest scores, until the target remains."""
    rows = [Row("hi", 1, 0.9), Row("none", 2, None), Row("lo", 3, 0.25), Row("mid", 4, 0.5)]
    assert cleanup_outside(rows, 2) == ["none", "lo"]
    assert cleanup_outside(rows, 4) == []


def test_cleanup_local_drops_oldest() -> None:
    """Local rows go oldest first."""
    rows = [Row("c", 30), Row("a", 10), Row("b", 20), Row("d", 40)]
    assert cleanup_local(rows, 2) == ["a", "b"]


def test_plan_insert_cleans_to_half_before_inserting() -> None:
    """A full table is halved first, so the new rows survive."""
    existing = [Row(f"e{i}", i, 0.5 + i / 100) for i in range(10)]
    new = [Row(f"n{i}", 100 + i) for i in range(3)]
    drop = plan_insert(existing, new, 10, cleanup_outside)
    assert drop == [f"e{i}" for i in range(5)]
    assert plan_insert(existing[:5], new, 10, cleanup_outside) == []


rows_strategy = st.lists(st.tuples(st.integers(0, 50), st.one_of(st.none(), st.floats(0, 1))), max_size=40)


@settings(max_examples=200)
@given(existing=rows_strategy, new=rows_strategy, limit=st.integers(1, 30), outside=st.booleans())
def test_plan_insert_never_exceeds_the_limit(existing: list, new: list, limit: int, outside: bool) -> None:
    """Whatever arrives, existing − dropped + inserted ≤ limit."""
    ex = [Row(f"e{i}", ts, sc) for i, (ts, sc) in enumerate(existing[:limit])]  # a table holds ≤ limit
    nw = [Row(f"n{i}", ts, None) for i, (ts, _) in enumerate(new)]
    rule = cleanup_outside if outside else cleanup_local
    drop = set(plan_insert(ex, nw, limit, rule))
    assert drop <= {r.sample_id for r in ex + nw}
    assert len(ex) + len(nw) - len(drop) <= limit
    if len(ex) + len(nw) <= limit:
        assert not drop
