"""The user-vector agent's pure steps: folding batches into the state, and what gets published."""

from __future__ import annotations

import pytest

from agents.vectors import RecentWindow, fold_state, vector_to_publish
from core.features import History, event_to_sample
from core.matching import most_recent_unserved
from core.sample import Sample
from streams.schemas import SampleSet
from streams.settings import Settings

SPACE = Settings().features


def _samples(user: str, n: int) -> list[Sample]:
    history, out = History(), []
    for i in range(n):
        fields = {"ts": 1_700_000_000 + 60 * i, "item_id": f"item-{i}", "item_tags": [f"t{i % 3}"],
                  "action": "click", "label": i % 2}
        sample, history = event_to_sample(user, fields, history, SPACE)
        out.append(sample)
    return out


def test_a_redelivered_batch_changes_no_state_but_publishes_the_vector_again() -> None:
    """A crash can lose the vector's publish after the state was written: redelivery must repair it."""
    samples = _samples("u1", 4)
    state, fresh = fold_state(None, samples, SPACE, 7, "d1")
    first = vector_to_publish("u1", state, len(samples))
    again, fresh_again = fold_state(state, samples, SPACE, 7, "d1")
    assert fresh == samples and fresh_again == [] and again == state
    assert first is not None and vector_to_publish("u1", again, len(samples)) == first
    assert first.count == 4


def test_nothing_is_published_without_samples() -> None:
    state, _ = fold_state(None, _samples("u2", 2), SPACE, 7, "d2")
    assert vector_to_publish("u2", state, 0) is None


def test_the_recent_window_reads_the_stored_days_as_the_joined_list_would() -> None:
    """Ids and times without building samples; the sample itself, when asked, as `to_samples` gives it."""
    samples = _samples("u3", 12)
    days = [SampleSet.of(samples[:5]), SampleSet.of([]), SampleSet.of(samples[5:9]), SampleSet.of(samples[9:])]
    for keep in (3, 7, 12, 50):
        joined = [x for d in days for x in d.to_samples("u3")][-keep:]
        window = RecentWindow("u3", days, keep)
        assert len(window) == len(joined)
        assert [(x.sample_id, x.ts) for x in window] == [(x.sample_id, x.ts) for x in joined]
        assert [x.sample() for x in reversed(window)] == joined[::-1]
        assert window[-1].sample() == joined[-1] and [x.sample_id for x in window[1:3]] == [
            x.sample_id for x in joined[1:3]]
        chosen = most_recent_unserved(window, {joined[-1].sample_id}, want=2, since_ts=0)
        assert [x.sample() for x in chosen] == most_recent_unserved(joined, {joined[-1].sample_id}, 2, 0)
    assert len(RecentWindow("u3", [])) == 0
    with pytest.raises(IndexError):
        RecentWindow("u3", days, 4)[4]
