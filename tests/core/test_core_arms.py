"""Tests for core.arms: each arm's pulls, training schedule and what it keeps, and the shared filter step."""

from __future__ import annotations

import random

import pytest

from core.arms import (
    ARMS,
    REGISTRY,
    SCHEDULES,
    Arm,
    arm_named,
    assign_arm,
    device_arm,
    random_like,
    schedules,
    select_kept,
)
from core.features import FeatureSpace
from core.lifecycle import after_filter
from core.sample import Sample
from core.training import FilterResult, filter_matched

SIGMA = 0.5
CODA_ARMS = ("coda", "coda_nofilter", "coda_random")
# A classifier's result, by hand: two matched samples were its negatives, six were scored, three ≥ σ.
SCORES = {"s0": 0.9, "s1": 0.2, "s2": 0.7, "s3": 0.1, "s4": 0.5, "s5": 0.3}
PICKS = {"s0", "s2", "s4"}
RESULT = FilterResult([], SCORES, ["n0", "n1"], list(SCORES))
PENDING = ["n0", "n1", *SCORES]
SPACE = FeatureSpace(item_buckets=256, tag_buckets=32, profile_buckets=32, seq_len=10)


def test_the_registry_names_every_arm_once_in_rotation_order() -> None:
    assert ARMS == ("cloud", "coda", "local", "coda_nofilter", "coda_random")
    assert all(isinstance(arm, Arm) and arm.name == name for name, arm in REGISTRY.items())
    assert arm_named("coda_random") is REGISTRY["coda_random"]
    with pytest.raises(ValueError):
        arm_named("nonsense")
    for n in range(30):
        name = assign_arm("buckets", n % 5, f"device-{n}")
        assert device_arm("buckets", n % 5, f"device-{n}") is REGISTRY[name]
    assert device_arm("coda", 3, "device-0") is REGISTRY["coda"]


def test_only_the_coda_arms_pull_and_only_coda_and_coda_random_classify() -> None:
    assert {name for name, arm in REGISTRY.items() if arm.pulls} == set(CODA_ARMS)
    assert {name for name, arm in REGISTRY.items() if arm.classifies} == {"coda", "coda_random"}


def _trains_anywhere(arm: Arm) -> bool:
    return any(
        [arm.trains_at_day_end(active) for active in (False, True)]
        + [arm.trains_when_kept(kept, 25) for kept in (0, 24, 25, 300)]
        + [arm.trains_on_notice(kept, today) for kept in (0, 1) for today in (False, True)]
    )


def test_cloud_never_trains() -> None:
    assert not _trains_anywhere(REGISTRY["cloud"])


def test_local_trains_at_the_end_of_an_active_day_only() -> None:
    local = REGISTRY["local"]
    assert local.trains_at_day_end(active=True) and not local.trains_at_day_end(active=False)
    assert not any(local.trains_when_kept(kept, 25) for kept in (0, 25, 300))
    assert not any(local.trains_on_notice(kept, today) for kept in (0, 1) for today in (False, True))


@pytest.mark.parametrize("name", CODA_ARMS)
def test_coda_arms_train_once_the_trigger_count_waits_and_on_the_notice(name: str) -> None:
    """After filtering at the trigger count; on the notice with something kept, or on local samples
    alone when the day kept nothing and the device has not trained today; never at day end."""
    arm = REGISTRY[name]
    assert not arm.trains_at_day_end(active=True)
    assert not arm.trains_when_kept(24, 25) and arm.trains_when_kept(25, 25) and arm.trains_when_kept(26, 25)
    assert arm.trains_on_notice(3, trained_today=True)
    assert arm.trains_on_notice(0, trained_today=False)
    assert not arm.trains_on_notice(0, trained_today=True)


def test_coda_keeps_exactly_the_classifiers_picks() -> None:
    outcome = REGISTRY["coda"].keep(PENDING, RESULT, SIGMA, seed=1)
    assert outcome.keep == {sid: SCORES[sid] for sid in sorted(PICKS)}
    assert sorted(outcome.delete) == ["n0", "n1", "s1", "s3", "s5"]  # the negatives are used up


def test_coda_random_keeps_a_draw_of_the_same_size_with_its_seed() -> None:
    arm = REGISTRY["coda_random"]
    outcome = arm.keep(PENDING, RESULT, SIGMA, seed=1)
    assert len(outcome.keep) == len(PICKS) and set(outcome.keep) <= set(SCORES)
    assert set(outcome.keep) != PICKS  # with this seed the draw differs from the classifier's picks
    assert outcome.keep == {sid: SCORES[sid] for sid in outcome.keep}  # kept with the classifier's scores
    assert {"n0", "n1"} <= set(outcome.delete) and set(outcome.delete) | set(outcome.keep) == set(PENDING)
    assert outcome == random_like(RESULT, SIGMA, 1) == arm.keep(PENDING, RESULT, SIGMA, seed=1)
    draws = {frozenset(arm.keep(PENDING, RESULT, SIGMA, seed=s).keep) for s in range(20)}
    assert len(draws) > 1  # the seed chooses


def test_coda_nofilter_keeps_every_matched_sample() -> None:
    outcome = REGISTRY["coda_nofilter"].keep(PENDING, None, SIGMA, seed=1)
    assert outcome.keep == dict.fromkeys(PENDING, 1.0) and outcome.delete == []


@pytest.mark.parametrize("name", ["cloud", "local"])
def test_arms_that_never_pull_keep_nothing(name: str) -> None:
    outcome = REGISTRY[name].keep(PENDING, RESULT, SIGMA, seed=1)
    assert outcome.keep == {} and outcome.delete == PENDING


@pytest.mark.parametrize("name", ["coda", "coda_random"])
def test_classifying_arms_need_the_classifiers_result(name: str) -> None:
    with pytest.raises(ValueError):
        REGISTRY[name].keep(PENDING, None, SIGMA, seed=1)


def _samples(user: str, n: int, tags: range, seed: int) -> list[Sample]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(3, SPACE.seq_len)
        seq_tags = tuple(tuple(sorted(rng.sample(tags, 2))) for _ in range(length))
        item, item_tags = rng.randrange(SPACE.item_buckets), tuple(sorted(rng.sample(tags, 2)))
        seq = tuple(rng.randrange(SPACE.item_buckets) for _ in range(length))
        profile = (rng.randrange(SPACE.profile_buckets),)
        label = int(rng.random() < 0.3)
        out.append(Sample(f"{user}-{i}", user, i, item, item_tags, seq, seq_tags, profile, label))
    return out


def test_select_kept_runs_the_classifier_once_with_the_filter_seed_and_lets_the_arm_choose() -> None:
    """The step both engines share: Algorithm 2 with the filter seed, then the arm's keep with the random one."""
    local = _samples("me", 60, range(8), 1)
    pending = _samples("alike", 30, range(8), 2) + _samples("other", 30, range(16, 24), 3)
    ids = [x.sample_id for x in pending]
    args = (SPACE, SIGMA, 1 / 3, 11, 12)  # space, σ, classifier share, filter seed, random seed
    result = filter_matched(local, pending, SPACE, SIGMA, 1 / 3, 11)
    picks = {x.sample_id for x in result.kept}
    assert 0 < len(picks) < len(result.scored_ids)

    coda = select_kept(REGISTRY["coda"], local, pending, *args)
    assert coda is not None and set(coda.keep) == picks
    assert coda == after_filter(result.classifier_train_ids, result.scores, SIGMA)
    drawn = select_kept(REGISTRY["coda_random"], local, pending, *args)
    assert drawn == random_like(result, SIGMA, 12) and len(drawn.keep) == len(picks)
    everything = select_kept(REGISTRY["coda_nofilter"], local, pending, *args)
    assert everything is not None and set(everything.keep) == set(ids)
    nothing = select_kept(REGISTRY["cloud"], local, pending, *args)
    assert nothing is not None and nothing.keep == {} and nothing.delete == ids


def test_select_kept_hands_the_classifier_model_on() -> None:
    """With the centroid, coda keeps what `filter_matched` keeps and coda_random draws as many."""
    local = _samples("me", 60, range(8), 1)
    pending = _samples("alike", 30, range(8), 2) + _samples("other", 30, range(16, 24), 3)
    result = filter_matched(local, pending, SPACE, 0.5, 1 / 3, 11, model="centroid")
    coda = select_kept(REGISTRY["coda"], local, pending, SPACE, 0.5, 1 / 3, 11, 12, None, "centroid")
    assert coda is not None and set(coda.keep) == {x.sample_id for x in result.kept} == {x.sample_id for x in pending[:30]}
    drawn = select_kept(REGISTRY["coda_random"], local, pending, SPACE, 0.5, 1 / 3, 11, 12, None, "centroid")
    assert drawn is not None and len(drawn.keep) == 30


def test_without_local_samples_classifying_arms_wait_and_the_others_do_not() -> None:
    pending = _samples("alike", 10, range(8), 2)
    args = (SPACE, SIGMA, 1 / 3, 11, 12)
    assert select_kept(REGISTRY["coda"], [], pending, *args) is None
    assert select_kept(REGISTRY["coda_random"], [], pending, *args) is None
    kept_all = select_kept(REGISTRY["coda_nofilter"], [], pending, *args)
    assert kept_all is not None and len(kept_all.keep) == len(pending)


def test_every_arm_states_its_schedule_for_the_report() -> None:
    assert list(SCHEDULES) == ["cloud", "local", "coda", "coda_nofilter", "coda_random"]
    assert all(REGISTRY[name].schedule == text for name, text in SCHEDULES.items())
    texts = schedules(25)
    assert texts["cloud"].startswith("never trains") and "no pulls" in texts["local"]
    assert texts["coda"].startswith("after filtering, once 25 filtered samples wait")
    assert texts["coda_nofilter"].startswith("keeping every matched sample, once 25")
    assert texts["coda_random"].startswith("after a random choice of the classifier's count, once 25")
