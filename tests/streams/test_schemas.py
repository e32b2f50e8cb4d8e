"""Wire schemas: every record round-trips; malformed input raises a clear SchemaError."""

from __future__ import annotations

import random
import zlib
from dataclasses import replace

import msgpack
import pytest
from hypothesis import given, settings as hsettings, strategies as st
from msgspec.structs import fields

from core.sample import Sample
from streams import schemas as s


def make_sample(rng: random.Random, i: int = 0) -> Sample:
    seq = tuple(rng.randrange(4096) for _ in range(rng.randrange(5)))
    return Sample(f"s{i}", f"u{i % 3}", 1_000_000 + i, rng.randrange(4096), (1, 2),
                  seq, tuple((rng.randrange(64),) for _ in seq), (5,), rng.randrange(2))


def examples() -> list[s.Record]:
    """One seeded instance of every registered record kind."""
    rng = random.Random(7)
    sample = s.SampleRecord.of(make_sample(rng))
    event = s.BehaviourEvent("user-1", 1_700_000_000, "item-9", ["a", "b"], "click", {"age": "25-34"}, 1)
    return [
        event,
        s.UpEnvelope("dev-1", [event, s.BehaviourEvent("user-1", 1, "i", [], "impression")], 5),
        s.PullRequest("dev-1", "user-1", 1_700_000_000, "r1", 12),
        s.DeviceActions("dev-1", [event], 19_000),
        s.DevicePast("dev-1", [event]),
        sample,
        s.SampleSet.of([sample.to_sample()]),  # samples carry their user in the batch, not in the set
        s.SampleBatchV1("u", "d", [sample, sample]),
        s.SampleBatch.of("u0", "d", [make_sample(rng, i) for i in (0, 3, 6)]),
        s.DayEnd(19_000),
        s.UserVector("u", [0.25, 0.75], 4, 100),
        s.MatchRequest("r1", "u", "d", 19_000, 300),
        s.MatchResult("u", 19_000, ["a", "b"], [0.9, 0.8]),
        s.NeighbourQuery("r1", "d", "u", 19_000, 0, 3, ["a"], 2),
        s.NeighbourSamples("r1", "d", "u", 19_000, 2, [sample]),
        s.DevicePull("r1", "d", "u", 19_000, 12),
        s.DownBatch("d", "b1", "r1", 19_000, 1, s.pack_samples([make_sample(rng)])),
        s.DownNotice("d", "r1", 19_000, "exhausted", 3),
        s.BatchRecord("d", "u", 19_000, "b1", "r1", ["s0"], ["u0"], 120),
        s.GlobalModel("v1", 5, b"\x00weights", {"emb_dim": "3"}, {"auc": "0.7"}),
        s.DeadLetter(b"\xff", "bad_msgpack", "detail", "coda.up", 3, 42, "ingest"),
        s.HistoryState([1, 2], [[3], [4, 5]], ["s0"]),
        s.UserStateV1(2, [0.5, 1.5], 10, ["s0"], [10], [sample], "d"),
        s.UserState(2, [0.5, 1.5], 10, ["s0"], [10], "d"),
        s.RecentSamples(s.SampleSet.of([make_sample(rng, i) for i in range(2)])),
        s.IdList(["a", "b"], [1, 2]),
        s.MatchCache([19_000], [["n1", "n2"]]),
        s.PendingGather("r1", 19_000, 2, [0], ["n1"], [sample]),
        s.DeviceState("u", 19_000, 3, ["s0"], [10], [s.PendingGather("r1", 19_000, 2, [0], [], [])]),
    ]


def test_every_registered_kind_has_an_example() -> None:
    """The round-trip examples cover the whole registry."""
    assert {type(r) for r in examples()} == set(s.REGISTRY.values())


@pytest.mark.parametrize("record", examples(), ids=lambda r: r.KIND)
def test_round_trip(record: s.Record) -> None:
    """encode → decode gives back an equal record."""
    assert s.decode(s.encode(record)) == record


def test_golden_bytes_v1_stay_decodable() -> None:
    """A v1 message written by an older build still decodes."""
    golden = bytes.fromhex("83a16baf636f6e74726f6c2e6461795f656e64a17601a3646179cd4a38")
    assert s.decode(golden) == s.DayEnd(19_000)


def test_device_state_written_before_sent_days_still_decodes() -> None:
    """Changelog state of an older build (sent ids inline, no `sent_days`) reads with the field empty."""
    old = msgpack.packb({"k": "state.device", "v": 1, "user": "u", "day": 19_000, "used": 3, "sent_ids": ["s0"],
                         "sent_ts": [10], "pending": [], "done": ["r0"]})
    assert s.decode(old) == s.DeviceState("u", 19_000, 3, ["s0"], [10], [], ["r0"], [])


def test_sample_payload_round_trip_and_compression() -> None:
    """Down-tunnel payloads round-trip (owner stripped) and compress."""
    rng = random.Random(1)
    samples = [make_sample(rng, i) for i in range(25)]
    payload = s.pack_samples(samples)
    back = s.unpack_samples(payload)
    assert [b.sample_id for b in back] == [x.sample_id for x in samples]
    assert all(b.user == "" for b in back)
    assert back[3].seq == samples[3].seq and back[3].label == samples[3].label


def _body(record: s.Record) -> dict:
    return s.to_plain(record)


@pytest.mark.parametrize(
    ("mutate", "reason", "names"),
    [
        (lambda b: b.update(v=99), "unknown_version", "version"),
        (lambda b: b.update(k="nope"), "unknown_kind", "nope"),
        (lambda b: b["events"][0].update(ts="soon"), "wrong_type", "events[0].ts"),
        (lambda b: b.pop("device_id"), "missing_field", "device_id"),
        (lambda b: b["events"][0].update(label=7), "out_of_range", "events[0].label"),
        (lambda b: b["events"][0].update(ts=True), "wrong_type", "events[0].ts"),
        (lambda b: b.update(events="x"), "wrong_type", "events"),
    ],
)
def test_malformed_envelopes_name_the_field(mutate, reason: str, names: str) -> None:
    """Each kind of bad field gives its reason and names the field."""
    body = _body(examples()[1])
    mutate(body)
    with pytest.raises(s.SchemaError) as err:
        s.decode(msgpack.packb(body))
    assert err.value.reason == reason
    assert names in str(err.value)


def test_nan_and_inf_are_rejected() -> None:
    """NaN or inf where a number is required is refused, naming the field."""
    for bad in (float("nan"), float("inf")):
        body = _body(s.UserVector("u", [0.1, bad], 1, 1))
        with pytest.raises(s.SchemaError, match=r"not_finite: vector\[1\]"):
            s.decode(msgpack.packb(body))


def test_truncated_and_oversize() -> None:
    """Truncated msgpack and messages over the byte limit are refused."""
    raw = s.encode(examples()[1])
    with pytest.raises(s.SchemaError, match="bad_msgpack"):
        s.decode(raw[: len(raw) // 2])
    with pytest.raises(s.SchemaError, match="oversize"):
        s.decode(raw, max_bytes=10)
    with pytest.raises(s.SchemaError, match="not_a_map"):
        s.decode(msgpack.packb([1, 2]))


def test_unexpected_kind_on_a_topic() -> None:
    """decode(expect=...) refuses a valid record of the wrong kind."""
    with pytest.raises(s.SchemaError, match="unexpected_kind"):
        s.decode(s.encode(s.DayEnd(1)), expect=s.UNIONS["UpMessage"])


def test_sample_sets_round_trip_exactly_and_share_the_timeline() -> None:
    """A user's consecutive samples (sliding sequences) and unrelated ones come back equal."""
    from core.features import FeatureSpace
    from core.ingest import IngestHistory, build_samples

    events = [s.BehaviourEvent("u1", 1_000 + i, f"item-{i % 7}", [f"t{i % 3}", f"t{i % 5}"],
                               "click" if i % 3 else "like") for i in range(60)]
    samples, _ = build_samples("u", events, IngestHistory(), FeatureSpace(seq_len=20))
    rng = random.Random(2)
    unrelated = [replace(make_sample(rng, i), user="u") for i in range(20)]
    for group in (samples, unrelated, samples[::-1], []):
        batch = s.SampleBatch.of("u", "d", group)
        assert s.decode(s.encode(batch)).to_samples() == [x for x in group]
    shared = s.SampleSet.of(samples)
    assert len(shared.timeline) < 2 * len(samples) + 20  # not one 20-long sequence per sample
    one_by_one = s.SampleBatchV1("u", "d", [s.SampleRecord.of(x) for x in samples])
    assert len(s.encode(shared)) * 2 < len(s.encode(one_by_one))


@pytest.mark.parametrize("mutate", [
    lambda b: b["samples"]["ts"].pop(),  # a column shorter than the others
    lambda b: b["samples"]["seq_to"].__setitem__(0, 10**6),  # a window past the timeline
    lambda b: b["samples"]["timeline_tags"].pop(),  # timeline and tags of different lengths
])
def test_inconsistent_sample_sets_are_refused(mutate) -> None:  # type: ignore[no-untyped-def]
    """Column lengths and sequence windows are checked, not only each field."""
    rng = random.Random(4)
    body = _body(s.SampleBatch.of("u", "d", [replace(make_sample(rng, i), user="u") for i in range(3)]))
    mutate(body)
    with pytest.raises(s.SchemaError, match="inconsistent"):
        s.decode(msgpack.packb(body))


def test_garbled_payload() -> None:
    """A down-tunnel payload that is not zlib(msgpack) is refused with a reason."""
    with pytest.raises(s.SchemaError, match="bad_payload"):
        s.unpack_samples(b"not zlib at all")


@hsettings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    """Any byte string either decodes or raises SchemaError, never anything else."""
    try:
        s.decode(raw)
    except s.SchemaError:
        pass


def test_record_fields_are_typed() -> None:
    """Every field of every record has a type the validator understands."""
    for cls in s.REGISTRY.values():
        for f in fields(cls):
            assert f.type is not None


_ODD_VALUES = [True, -1, 2**31 + 1, 2**41, 1.5, "7", None, [], [1], [[1]], [-1], ["x"], list(range(65)),
               [[1, 2], [3]], [[True]], "x" * 65, b"raw", {"a": 1}]


@hsettings(max_examples=300, deadline=None)
@given(st.integers(0, 4), st.integers(0, 7), st.sampled_from(_ODD_VALUES))
def test_whole_payload_check_accepts_only_what_the_row_check_accepts(row: int, column: int, value: object) -> None:
    """The column-wise fast path never lets through a row the per-row `SampleRecord` check refuses."""
    rng = random.Random(row * 8 + column)
    rows = msgpack.unpackb(zlib.decompress(s.pack_samples([make_sample(rng, i) for i in range(5)])))
    assert s._rows_valid(rows)  # noqa: SLF001 - valid payloads take the fast path
    rows[row][column] = value
    try:
        slow = s._samples_row_by_row(rows)  # noqa: SLF001
    except s.SchemaError:
        slow = None
    if s._rows_valid(rows):  # noqa: SLF001
        assert slow is not None and s.unpack_samples(zlib.compress(msgpack.packb(rows))) == slow
