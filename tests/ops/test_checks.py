"""Checks that can fail, and dead letters described by reason, field, expected and got."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from core.features import FeatureSpace, History, event_to_sample, user_feature
from core.sample import DAY, Sample
from core.vectors import UserAccumulator, mean_vector
from ops.audit.checks import batch_rules, knn_recall, vector_norms, vector_parity
from ops.audit.exports import RunRecords, write_exports
from ops.audit.features import feature_matrix
from ops.datasets import load_dataset
from streams import deadletterview as deadletters
from streams.schemas import BehaviourEvent, DeadLetter, MatchResult, UpEnvelope, UserVector, encode
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


def _samples(space: FeatureSpace) -> list[Sample]:
    """A small synthetic run's samples, built the way ingest builds them (each user's history in order)."""
    events = load_dataset("synthetic", n_users=12, days=3, events_per_user=(6, 12), seed=1).events
    histories: dict[str, History] = {}
    out = []
    for e in sorted(events, key=lambda e: (e["user_id"], e["ts"])):
        sample, histories[e["user_id"]] = event_to_sample(e["user_id"], e, histories.get(e["user_id"], History()),
                                                          space)
        out.append(sample)
    return out


def _published(samples: list[Sample], space: FeatureSpace) -> RunRecords:
    """The run as the cloud leaves it: each user's vector folded incrementally, as the vectors agent does."""
    accs: dict[str, UserAccumulator] = {}
    for s in samples:
        accs.setdefault(s.user, UserAccumulator()).add([s], space)
    return RunRecords(vectors={u: UserVector(u, a.mean, a.count, a.last_ts) for u, a in accs.items()},
                      samples={s.sample_id: s for s in samples})


@pytest.mark.parametrize("space", [FeatureSpace(), FeatureSpace(user_feature="clicks"),
                                   FeatureSpace(user_period_days=2)], ids=["sequence", "clicks", "period"])
def test_feature_matrix_matches_the_dense_reference_bit_for_bit(space: FeatureSpace, tmp_path: Path) -> None:
    """Per-user means equal mean_vector of the dense features, and the export rounds them as before."""
    samples = _samples(space)
    matrix = feature_matrix(reversed(samples), space)
    for user, rows, last in matrix.blocks():
        mine = [s for s in samples if s.user == user]
        assert matrix.mean(rows).tolist() == mean_vector([user_feature(s, space) for s in mine])
        assert last == max(s.ts for s in mine)
    day = min(s.ts for s in samples) // DAY
    assert {u: len(rows) for u, rows, _ in matrix.blocks(day)} == dict(Counter(s.user for s in samples
                                                                               if s.ts // DAY <= day))
    write_exports(RunRecords(samples={s.sample_id: s for s in samples}), tmp_path, space)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    ordered = sorted(samples, key=lambda s: (s.user, s.ts, s.sample_id))
    assert [r["sample_id"] for r in rows] == [s.sample_id for s in ordered]
    assert [r["feature"] for r in rows] == [[round(x, 8) for x in user_feature(s, space)] for s in ordered]


def test_vector_parity_fails_on_a_small_error_a_wrong_count_or_a_missing_vector() -> None:
    """An entry 1e-4 off, a count one short, a user without a vector or without samples: each fails."""
    space = FeatureSpace()
    run = _published(_samples(space), space)
    assert vector_parity(run, space)["ok"]
    user = sorted(run.vectors)[3]
    v = run.vectors[user]
    for tampered in (UserVector(user, [x + (1e-4 if i == 7 else 0.0) for i, x in enumerate(v.vector)],
                                v.count, v.last_ts),
                     UserVector(user, v.vector, v.count - 1, v.last_ts)):
        failed = vector_parity(RunRecords(vectors={**run.vectors, user: tampered}, samples=run.samples), space)
        assert not failed["ok"] and failed["mismatched"] == [user]
    missing = RunRecords(vectors={u: x for u, x in run.vectors.items() if u != user}, samples=run.samples)
    assert not vector_parity(missing, space)["ok"]
    stranger = RunRecords(vectors={**run.vectors, "nobody": v}, samples=run.samples)
    assert vector_parity(stranger, space)["mismatched"] == ["nobody"]


def test_knn_recall_compares_each_match_with_brute_force_on_its_own_day() -> None:
    """Exact neighbours as of each day pass; the farthest users instead fail."""
    space, k, window = FeatureSpace(), 3, 7
    samples = _samples(space)
    run = _published(samples, space)
    days = sorted({s.ts // DAY for s in samples})
    exact, farthest = [], []
    for day in days[:2]:
        users = sorted({s.user for s in samples if s.ts // DAY <= day})
        unit = {u: _unit(mean_vector([user_feature(s, space) for s in samples if s.user == u and s.ts // DAY <= day]))
                for u in users}
        for u in users:
            ranked = sorted((x for x in users if x != u), key=lambda x: -float(unit[u] @ unit[x]))
            exact.append(MatchResult(u, day + 1, ranked[:k], [0.0] * k, day))
            farthest.append(MatchResult(u, day + 1, ranked[-k:], [0.0] * k, day))
    good = knn_recall(RunRecords(run.vectors, run.samples, matches=exact), space, window, k)
    assert good["ok"] and good["checked"] == len(exact) and good["mean_recall"] == 1.0, good
    assert not knn_recall(RunRecords(run.vectors, run.samples, matches=farthest), space, window, k)["ok"]


def _unit(vector: list[float]) -> np.ndarray:
    a = np.array(vector)
    return a / (np.linalg.norm(a) or 1.0)
