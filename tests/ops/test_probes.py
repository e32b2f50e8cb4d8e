"""Tests for the filter probe: what a classifier's scores know about a matched sample's source."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from core.arms import arm_named, select_kept
from core.features import FeatureSpace
from core.metrics import auc
from core.sample import Sample
from core.training import FilterResult
from ops.experiment.probes import FilterProbe, by_source, outcome_agreement


def _sample(sid: str, user: str, tag: int, label: int) -> Sample:
    return Sample(sid, user, 0, tag, (tag,), (), (), (), label)


def _result(scores: dict[str, float], kept: Sequence[Sample] = ()) -> FilterResult:
    return FilterResult(list(kept), scores, [], list(scores))


def test_by_source_averages_each_sources_samples() -> None:
    pooled = by_source(np.array([1.0, 0.0, 0.4, 0.6]), ["a", "b", "a", "b"])
    assert pooled.tolist() == pytest.approx([0.7, 0.3, 0.7, 0.3])


def test_outcome_agreement_rewards_outcomes_the_user_would_have_had() -> None:
    """The user clicks tag 1 and passes tag 2; the pool does the opposite: agreeing outcomes score > 0."""
    local = [_sample(f"l{i}", "me", 1, 1) for i in range(20)] + [_sample(f"m{i}", "me", 2, 0) for i in range(20)]
    pool = [_sample(f"p{i}", "x", 1, 0) for i in range(20)] + [_sample(f"q{i}", "x", 2, 1) for i in range(20)]
    scored = [_sample("a", "x", 1, 1), _sample("b", "x", 2, 0), _sample("c", "x", 1, 0), _sample("d", "x", 2, 1)]
    llr = outcome_agreement(local, pool, scored)
    assert llr[0] > 0 and llr[1] > 0 and llr[2] < 0 and llr[3] < 0


def test_probe_reads_a_perfect_and_a_blind_classifier() -> None:
    groups = {"me": 0, "mate1": 0, "mate2": 0, "other1": 1, "other2": 1}
    local = [_sample("l", "me", 1, 1)]
    pending = [_sample(f"{u}-{i}", u, 1, i % 2) for u in ("mate1", "mate2", "other1", "other2") for i in range(3)]
    perfect = {x.sample_id: 1.0 if groups[x.user] == 0 else 0.0 for x in pending}
    blind = dict.fromkeys(perfect, 0.5)
    probe = FilterProbe(groups)
    probe.observe("coda", local, pending, _result(perfect, [x for x in pending if perfect[x.sample_id] == 1.0]))
    probe.observe("coda_random", local, pending, _result(blind))
    probe.observe("coda", [_sample("l2", "stranger", 1, 1)], pending, _result(perfect))  # no known group: skipped
    out = probe.summary()
    assert out["coda"]["runs"] == 1 and out["coda"]["scored"] == 12 and out["coda"]["own_group_share"] == 0.5
    assert out["coda"]["classifier"] == 1.0 and out["coda"]["classifier_by_source"] == 1.0
    assert out["coda_random"]["classifier"] == 0.5 and out["coda_random"]["classifier_by_source"] == 0.5
    assert out["coda"]["picked_share"] == 0.5 and out["coda"]["picked_own_group_share"] == 1.0


def test_a_run_with_one_class_gives_no_auc() -> None:
    probe = FilterProbe({"me": 0, "mate": 0})
    pending = [_sample(f"s{i}", "mate", 1, 1) for i in range(3)]
    probe.observe("coda", [_sample("l", "me", 1, 1)], pending, _result(dict.fromkeys(["s0", "s1", "s2"], 0.9)))
    assert probe.summary()["coda"]["classifier"] is None


def test_select_kept_shows_the_observer_every_scored_sample() -> None:
    space = FeatureSpace()
    local = [_sample(f"l{i}", "me", i % 4, i % 2) for i in range(12)]
    pending = [_sample(f"p{i}", "x", i % 4, i % 3 == 0) for i in range(30)]
    seen: list[FilterResult] = []
    outcome = select_kept(arm_named("coda"), local, pending, space, 0.5, 1 / 3, 7, 8, seen.append)
    assert outcome is not None and len(seen) == 1
    assert len(seen[0].scored_ids) == 20 and set(outcome.keep) <= set(seen[0].scored_ids)


@pytest.mark.parametrize("knowledge", [0.6, 0.75, 0.9, 1.0])
def test_a_filter_that_knows_the_groups_in_part_separates_them_at_that_auc(knowledge: float) -> None:
    """Noisy knowledge: own-group AUC at the asked value, about half above σ 0.5, the same score every time."""
    groups = {f"u{i}": i % 2 for i in range(100)}
    local = [_sample("l", "u0", 1, 1)]
    matched = [_sample(f"s{j}", f"u{j % 100}", 1, 0) for j in range(8000)]
    probe = FilterProbe(groups, decides=True, knowledge=knowledge)
    scores = np.array(probe.knows_groups(local, matched, None))
    own = np.array([groups[x.user] == 0 for x in matched])
    assert auc(own, scores) == pytest.approx(knowledge, abs=0.015)
    assert 0.45 < float((scores >= 0.5).mean()) < 0.55
    assert probe.knows_groups(local, matched[:50], None) == scores[:50].tolist()


@pytest.mark.parametrize("knowledge", [0.5, 0.3, 1.2])
def test_filter_knowledge_outside_an_informative_auc_is_refused(knowledge: float) -> None:
    with pytest.raises(ValueError, match="AUC in"):
        FilterProbe({}, decides=True, knowledge=knowledge)
