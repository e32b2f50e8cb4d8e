"""Pure cloud-side rules: chunking, quotas, scatter/gather merging, incremental means, pseudonyms."""

from __future__ import annotations

import random

from hypothesis import given, strategies as st

from core.batching import DailyQuota, chunk
from core.features import FeatureSpace, History, event_to_sample, user_feature, user_feature_sparse
from core.matching import group_by_partition, merge_answers, most_recent_unserved, per_neighbour_ask
from core.privacy import device_pseudonym, user_pseudonym
from core.sample import Sample
from core.vectors import UserAccumulator, mean_vector

SPACE = FeatureSpace()


def sample(i: int, user: str = "u", ts: int = 0) -> Sample:
    rng = random.Random(i)
    seq = tuple(rng.randrange(100) for _ in range(rng.randrange(4)))
    return Sample(f"s{i}", user, ts or 1000 + i, rng.randrange(100), (rng.randrange(256),), seq,
                  tuple((rng.randrange(256),) for _ in seq), (), rng.randrange(2))


@given(st.integers(0, 1000))
def test_chunk_sizes(n: int) -> None:
    """Batches hold 25–40 except when fewer than 25 exist or the remainder cannot be absorbed."""
    batches = chunk(list(range(n)))
    assert sum(len(b) for b in batches) == n
    assert [x for b in batches for x in b] == list(range(n))
    assert all(len(b) <= 40 for b in batches)
    assert all(len(b) >= 25 for b in batches[:-1])
    if n >= 25:
        small = [b for b in batches if len(b) < 25]
        assert len(small) <= 1


def test_chunk_absorbs_fragment() -> None:
    """60 items become 30+30, not 25+25+10; 51 become 26+25."""
    assert [len(b) for b in chunk(list(range(60)))] == [30, 30]
    assert [len(b) for b in chunk(list(range(51)))] == [26, 25]
    assert [len(b) for b in chunk(list(range(10)))] == [10]


def test_daily_quota_resets_by_event_day() -> None:
    """The quota counts per event-time day."""
    q = DailyQuota().on(5).spend(12)
    assert q.remaining(12) == 0
    assert q.on(5).remaining(12) == 0 and q.on(6).remaining(12) == 12


def test_incremental_mean_equals_batch_mean_and_is_idempotent() -> None:
    """Algorithm 1 incrementally equals the batch mean; redelivered samples are not counted twice."""
    samples = [sample(i) for i in range(50)]
    acc = UserAccumulator()
    acc.add(samples[:30], SPACE)
    acc.add(samples[20:], SPACE)  # 10 redelivered
    assert acc.count == 50
    expected = mean_vector([user_feature(s, SPACE) for s in samples])
    assert max(abs(a - b) for a, b in zip(acc.mean, expected, strict=True)) < 1e-12


def test_sparse_user_feature_is_bit_identical_to_the_dense_sum() -> None:
    """The accumulator adds sparse features; its total equals the dense running sum exactly."""
    rng = random.Random(3)

    def tags() -> tuple[int, ...]:
        return tuple(sorted(rng.sample(range(SPACE.tag_buckets), rng.randrange(4))))

    samples = [Sample(f"s{i}", "u", 1000 + i, 1, tags(), (1,) * 20, tuple(tags() for _ in range(20)), (), 0)
               for i in range(200)]
    dense = [0.0] * SPACE.tag_buckets
    for s in samples:
        feature = user_feature(s, SPACE)
        assert user_feature_sparse(s) == {i: f for i, f in enumerate(feature) if f}
        dense = [t + f for t, f in zip(dense, feature, strict=True)]
    acc = UserAccumulator()
    acc.add(samples, SPACE)
    assert acc.total == dense


def test_clicks_feature_is_the_tag_share_of_clicks() -> None:
    """match_feature "clicks": a click spreads +1 over the item's tags, a pass −1/3; the sequence is ignored."""
    space = FeatureSpace(user_feature="clicks")
    clicked = Sample("a", "u", 1, 1, (3, 7), (9,), ((5,),), (), 1)
    shown = Sample("b", "u", 2, 2, (4,), (9,), ((5,),), (), 0)
    assert user_feature_sparse(clicked, "clicks") == {3: 0.5, 7: 0.5}
    assert user_feature_sparse(shown, "clicks") == {4: -1 / 3}
    acc = UserAccumulator()
    acc.add([clicked, shown], space)
    assert acc.count == 2 and acc.mean[3] == acc.mean[7] == 0.25 and acc.mean[4] == -1 / 6
    assert acc.mean == mean_vector([user_feature(s, space) for s in (clicked, shown)])


def test_clicks_sequence_holds_what_the_user_picked() -> None:
    """sequence_actions "clicks": a pass still becomes a sample but not a behaviour; a purchase does."""
    events = [{"ts": 10, "item_id": "a", "action": "click"},
              {"ts": 11, "item_id": "b", "action": "impression"},
              {"ts": 12, "item_id": "c", "action": "impression", "label": 1},
              {"ts": 13, "item_id": "d", "action": "purchase"},
              {"ts": 14, "item_id": "e", "action": "impression"}]

    def sequences(space: FeatureSpace) -> list[tuple[int, ...]]:
        history, seqs = History(), []
        for event in events:
            sample, history = event_to_sample("u", event, history, space)
            seqs.append(sample.seq)
        return seqs

    bucket = {x: event_to_sample("u", {"ts": 0, "item_id": x, "action": "click"}, History(), SPACE)[0].item
              for x in "abcde"}
    a, b, c, d = (bucket[x] for x in "abcd")
    assert sequences(SPACE) == [(), (a,), (a, b), (a, b, c), (a, b, c, d)]
    assert sequences(FeatureSpace(sequence_actions="clicks")) == [(), (a,), (a,), (a, c), (a, c, d)]


def test_period_feature_keys_the_same_taste_by_calendar_period() -> None:
    """match_period_days N: a sample's entries move to buckets of (tag, N-day period); the mean stays exact."""
    space = FeatureSpace(user_feature="clicks", user_period_days=4)
    day = 86_400
    first = [Sample(f"a{i}", "u", day * i + 5, 1, (3, 7), (), (), (), 1) for i in range(4)]  # days 0-3: one period
    later = Sample("b", "u", day * 4 + 5, 1, (3, 7), (), (), (), 1)  # day 4: the next period
    keys = {tuple(user_feature_sparse(s, "clicks", 4, space.tag_buckets)) for s in first}
    assert len(keys) == 1  # one period, one set of buckets
    assert set(user_feature_sparse(later, "clicks", 4, space.tag_buckets)) != set(next(iter(keys)))
    assert sum(user_feature_sparse(later, "clicks", 4, space.tag_buckets).values()) == 1.0  # nothing lost
    acc = UserAccumulator()
    acc.add([*first, later], space)
    assert acc.mean == mean_vector([user_feature(s, space) for s in [*first, later]])
    assert user_feature(later, FeatureSpace(user_feature="clicks"))[3] == 0.5  # 0: the paper's lifetime mean


def test_prune_keeps_window() -> None:
    """Samples outside the match window leave `recent`."""
    acc = UserAccumulator()
    acc.add([sample(i, ts=86_400 * i + 1) for i in range(10)], SPACE)
    acc.prune(acc.last_ts, window_days=3, dedup_days=14, keep_recent=500)
    assert {s.sample_id for s in acc.recent} == {"s7", "s8", "s9"}


def test_scatter_and_gather() -> None:
    """Neighbours group by partition; answers merge round-robin by rank, newest first, deduped."""
    groups = group_by_partition(["a", "b", "c", "d"], lambda n: ord(n) % 2)
    assert groups == {1: ["a", "c"], 0: ["b", "d"]}
    assert per_neighbour_ask(300, 100) == 3 and per_neighbour_ask(0, 10) == 0
    a = [sample(1, "a"), sample(2, "a")]
    b = [sample(3, "b")]
    merged = merge_answers({"a": a, "b": b}, ["b", "a"], {"s2"}, capacity=10)
    assert [s.sample_id for s in merged] == ["s3", "s1"]


def test_most_recent_unserved() -> None:
    """A neighbour answers with its newest in-window samples the device was not served."""
    recent = [sample(i, "n", ts=100 * i) for i in range(1, 6)]  # oldest first
    chosen = most_recent_unserved(recent, {"s5"}, want=2, since_ts=200)
    assert [s.sample_id for s in chosen] == ["s4", "s3"]


def test_pseudonyms_are_keyed_and_separate() -> None:
    """Pseudonyms depend on the key and differ between user and device namespaces."""
    assert user_pseudonym("k", "42") == user_pseudonym("k", "42")
    assert user_pseudonym("k", "42") != user_pseudonym("k2", "42")
    assert user_pseudonym("k", "42") != device_pseudonym("k", "42")
    assert "42" not in user_pseudonym("k", "42")
