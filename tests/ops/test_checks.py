"""Checks that can fail, and dead letters described by reason, field, expected and got."""

from __future__ import annotations

from ops.audit.checks import batch_rules, knn_recall, vector_norms
from ops.audit.exports import RunRecords
from streams import deadletterview as deadletters
from streams.schemas import BehaviourEvent, DeadLetter, UpEnvelope, UserVector, encode
from streams.settings import Settings


def _run(vectors: dict[str, list[float]]) -> RunRecords:
    return RunRecords(vectors={u: UserVector(u, v, 1, 0) for u, v in vectors.items()})


def test_zero_vectors_for_most_users_fail() -> None:
    """A typo'd tag field leaves every vector zero: the check says so instead of passing."""
    failed = vector_norms(_run({"a": [0.0, 0.0], "b": [0.0, 0.0], "c": [1.0, 0.0]}))
    assert not failed["ok"] and failed["zero_norm"] == 2 and "item_tags" in failed["problem"]
    assert vector_norms(_run({"a": [0.0, 1.0], "b": [0.0, 0.0]}))["ok"]
    assert not vector_norms(RunRecords())["ok"]


def test_no_matches_fail_and_no_batches_fail_when_devices_pulled() -> None:
    """No matches at all, or pulls answered by no batch, are failures rather than vacuous passes."""
    s = Settings()
    recall = knn_recall(_run({"a": [1.0]}), s.features, s.match_window_days, s.k_neighbours)
    assert not recall["ok"] and recall["problem"] == "no matches were published"
    assert batch_rules(RunRecords(), 25, 40, 12)["ok"]
    pulled = batch_rules(RunRecords(), 25, 40, 12, pulls=7)
    assert not pulled["ok"] and pulled["problems"] == {"no_batches_though_devices_pulled": 7}


def test_dead_letters_by_reason_name_field_expected_and_got() -> None:
    """Counts by reason with one example; an envelope's events are counted; the cause line names them."""
    envelope = encode(UpEnvelope("d", [BehaviourEvent("u", 1, "i", [], "click")] * 3))
    detail = "events[0].profile['age']: expected str, got int"
    letters = [DeadLetter(envelope, "wrong_type", detail, "coda.up", 2, 40 + i, "cloud") for i in range(2)]
    summary = deadletters.by_reason(letters)
    assert summary["total"] == 2
    entry = summary["by_reason"]["wrong_type"]
    assert entry["count"] == 2 and entry["events"] == 6
    assert entry["example"] == {"field": "events[0].profile['age']", "expected": "str", "got": "int",
                                "detail": detail, "where": "coda.up[2]@40"}
    assert deadletters.cause(letters) == f"wrong_type: {detail} (6)"
    row = next(deadletters.rows(letters))
    assert (row["reason"], row["topic"], row["partition"], row["offset"]) == ("wrong_type", "coda.up", 2, 40)


async def test_no_samples_error_names_the_dead_letters_behind_it(settings: Settings) -> None:
    """'no samples to train on' says what was rejected and how often, read from the dead-letter topic."""
    import pytest

    from agents.globalmodel import NoSamples, train_and_publish
    from streams.kafka import ensure_topics, producer
    from streams.topics import load_topics

    topics = load_topics(settings.topics_file, settings.topic_prefix)
    await ensure_topics(settings, topics)
    envelope = encode(UpEnvelope("d", [BehaviourEvent("u", 1, "i", [], "click")] * 4))
    out = producer(settings)
    await out.start()
    try:
        for i in range(3):
            letter = DeadLetter(envelope, "wrong_type", "events[0].profile['age']: expected str, got int",
                                topics.name("up"), 0, i, "cloud")
            await out.send_and_wait(topics.name("dead-letters"), encode(letter), key=b"up")
    finally:
        await out.stop()
    with pytest.raises(NoSamples) as caught:
        await train_and_publish(settings, None, epochs=1, seed=0)
    assert "3 message(s) were dead-lettered: wrong_type: events[0].profile['age']: expected str, got int (12)" \
        in str(caught.value)


def test_a_demo_without_samples_says_which_events_were_rejected_and_why(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """'all N history events were rejected: <field>: expected …, got … (N)', with the dead letters exported."""
    import argparse
    import asyncio
    import json

    from agents.globalmodel import NoSamples
    from ops.cli.cmd_demo import Demo

    envelope = encode(UpEnvelope("d", [BehaviourEvent("u", 1, "i", [], "click")] * 6))
    detail = "events[0].profile['age']: expected str, got int"
    letters = [DeadLetter(envelope, "wrong_type", detail, "coda.up", 0, i, "cloud") for i in range(2)]
    args = argparse.Namespace(out=tmp_path / "out", checked=None)
    demo = Demo(args, Settings(state_dir=tmp_path / "state"), Settings())
    error = asyncio.run(demo._fail(None, NoSamples("no samples", letters), history_events=12))
    assert str(error).startswith(f"all 12 history events were rejected: wrong_type: {detail} (12)")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert not summary["ok"] and summary["dead_letters"]["by_reason"]["wrong_type"]["events"] == 12
    rows = (tmp_path / "out" / "dead_letters.jsonl").read_text().splitlines()
    assert [json.loads(r)["offset"] for r in rows] == [0, 1]
