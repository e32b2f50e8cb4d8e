"""Bad input: property-based and mutation fuzzing of up-tunnel envelopes, alone and through a real worker."""

from __future__ import annotations

import random

import msgpack
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from relhelp import PULL_BATCHES, Reference, namespace

from core.ingest import IngestHistory, build_samples
from ops.audit.exports import collect
from ops.chaos.inputs import MUTATIONS, mutate
from ops.chaos.oracle import compare_vectors, expected_state
from ops.chaos.run import ChaosRun, dead_letter_mismatch, reconcile
from streams.schemas import BehaviourEvent, SchemaError, UpEnvelope, decode, encode
from streams.settings import Settings
from streams.topics import load_topics

TOPICS = load_topics()
UP_KINDS = TOPICS["up"].kinds
SETTINGS = Settings()
FUZZ = hsettings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

names = st.text(min_size=1, max_size=40)
events = st.builds(
    BehaviourEvent,
    user_id=st.sampled_from(["u1", "u2", "ü-3"]),
    ts=st.integers(0, 2**40),
    item_id=names,
    item_tags=st.lists(names, max_size=5),
    action=st.sampled_from(["impression", "click", "page_view", "share"]),
    profile=st.none() | st.dictionaries(names, names, max_size=4),
    label=st.none() | st.integers(0, 1),
)
envelopes = st.builds(UpEnvelope, device_id=names, events=st.lists(events, min_size=1, max_size=8),
                      sent_ts=st.integers(0, 2**40))
# any msgpack-able tree: what a broken or hostile client could put in a field
trees = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _decode(raw: bytes | None) -> object:
    """decode with the ingest agent's limits: a record, or a SchemaError (anything else fails the test)."""
    try:
        return decode(raw, SETTINGS.max_envelope_bytes, UP_KINDS)  # type: ignore[arg-type]
    except SchemaError as err:
        assert err.reason and err.detail
        return err


@FUZZ
@given(envelopes)
def test_valid_envelopes_round_trip(envelope: UpEnvelope) -> None:
    """Every valid envelope decodes to itself."""
    assert _decode(encode(envelope)) == envelope


@FUZZ
@given(envelopes, st.sampled_from(MUTATIONS), st.integers(0, 2**32))
def test_mutations_fail_with_a_named_reason(envelope: UpEnvelope, kind: str, seed: int) -> None:
    """Every mutation of a valid envelope is a valid record or a SchemaError, never another exception."""
    raw = mutate(envelope, random.Random(seed), kind, 2_000 if kind == "oversize" else SETTINGS.max_envelope_bytes)
    _decode(raw)


@FUZZ
@given(envelopes, st.sampled_from(["device_id", "events", "sent_ts", "k", "v", "event"]), trees)
def test_any_value_in_any_field_is_a_record_or_a_schema_error(envelope: UpEnvelope, name: str, value: object) -> None:
    """Arbitrary msgpack trees in place of a field (or of an event) never escape as another error type."""
    body = msgpack.unpackb(encode(envelope), raw=False)
    if name == "event":
        body["events"][0] = value
    else:
        body[name] = value
    _decode(msgpack.packb(body, use_bin_type=True))


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_a_schema_error(raw: bytes) -> None:
    """Random bytes decode to a named SchemaError (or, vanishingly rarely, a real record)."""
    _decode(raw)


# Distinct events. Two events with the same (ts, item, action) share a sample id: they are one
# event delivered twice, and the first copy to arrive wins (a conflicting copy changes nothing).
distinct_events = st.lists(events, min_size=1, max_size=12, unique_by=lambda e: (e.ts, e.item_id, e.action))


@FUZZ
@given(distinct_events, st.randoms(use_true_random=False))
def test_ingest_is_order_free_and_idempotent(evs: list[BehaviourEvent], rng: random.Random) -> None:
    """Shuffled events give the same samples; redelivering them adds none and leaves the history as it was."""
    space = SETTINGS.features
    samples, state = build_samples("user", evs, IngestHistory(), space)
    shuffled = list(evs)
    rng.shuffle(shuffled)
    again, state2 = build_samples("user", shuffled, IngestHistory(), space)
    assert again == samples and state2 == state
    redelivered, state3 = build_samples("user", shuffled, state, space)
    assert redelivered == [] and state3.history == state.history
    assert len({s.sample_id for s in samples}) == len(samples)


async def test_bad_and_redelivered_traffic_through_a_real_worker(reference: Reference, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """~300 bad, duplicate, shuffled and unknown-device messages mixed in: dead-lettered exactly, state unchanged."""
    ref = reference
    settings = namespace(ref.settings.bootstrap, tmp_path, "fuzz")
    topics = load_topics(prefix=settings.topic_prefix)
    chaos = ChaosRun(settings, topics, bad_per_day=109, oversize_per_day=1, noise_per_day=12, ghost_pulls_per_day=3,
                     repeat_pulls=True, shuffle_events=True, pull_batches=PULL_BATCHES, seed=3)
    stats = await chaos.run(ref.plans)  # raises if a worker died
    run = await collect(settings, topics)
    ledger = chaos.ledger
    assert ledger.invalid == 220 and ledger.valid >= 100
    assert set(ledger.bad) >= {"truncated", "wrong_type", "wrong_version", "non_finite", "huge_list",
                               "missing_field", "random_bytes", "oversize"}, ledger.bad

    balance = reconcile(stats, ledger, len(run.dead))
    assert balance["ok"], balance
    letters = dead_letter_mismatch(run, topics, ledger)
    assert letters["raw_equal"] and letters["reasons_equal"] and letters["all_have_origin"], letters
    assert letters["letters"] == ledger.invalid == len(run.dead)

    # duplicates, late and shuffled copies and unknown devices added no sample and changed no vector
    assert set(run.samples) == set(ref.run.samples)
    assert compare_vectors(run, {u: (v.count, v.vector) for u, v in ref.run.vectors.items()})["ok"]
    assert compare_vectors(run, expected_state(ref.plans, settings).vectors)["ok"]
    assert stats["vectors"]["duplicate_samples"] == 0  # ingest already dropped every repeated id
    assert stats["assemble"]["duplicate_pulls"] == ledger.noise["redelivered_pull"] > 0
    # redelivered pulls were no-ops: the same batches as the reference, to the same devices
    assert sorted((b.device, b.day, tuple(b.sample_ids)) for b in run.batches) == \
        sorted((b.device, b.day, tuple(b.sample_ids)) for b in ref.run.batches)
