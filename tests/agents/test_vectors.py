"""The user-vector agent's pure steps: folding batches into the state, and what gets published."""

from __future__ import annotations

from agents.vectors import fold_state, vector_to_publish
from core.features import History, event_to_sample
from core.sample import Sample
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
