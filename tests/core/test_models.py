"""Tests for core.tensors and core.models: layout, masking, shapes, weights as bytes."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.features import FeatureSpace, sequence_tag_histogram
from core.models import DIN, SampleClassifier, state_from_bytes, state_to_bytes
from core.sample import Sample
from core.tensors import MAX_TAGS, classifier_features, collate, din_inputs, index_batch, seq_tag_histograms

SPACE = FeatureSpace(item_buckets=64, tag_buckets=16, profile_buckets=32, seq_len=6)


def make_sample(
    i: int,
    seq: tuple[int, ...] = (),
    profile: tuple[int, ...] = (),
    tags: tuple[int, ...] = (1,),
    label: int = 0,
) -> Sample:
    """A sample whose behaviour items carry tags derived from the item bucket."""
    seq_tags = tuple((s % 16, (s + 3) % 16) for s in seq)
    return Sample(f"s{i}", "u", i, i % 64, tags, seq, seq_tags, profile, label)


SAMPLES = [
    make_sample(0, seq=(5, 6), profile=(1,)),
    make_sample(1, seq=(7, 8, 9, 10, 11, 12), profile=(2, 3, 4), tags=(1, 2, 3, 4, 5, 6), label=1),
    make_sample(2),
]


def test_collate_left_pads_sequences_with_mask() -> None:
    """Short sequences sit at the end of the row, padding in front is masked out."""
    b = collate(SAMPLES, SPACE)
    assert b["seq"].shape == (3, 6) and b["seq_tags"].shape == (3, 6, MAX_TAGS)
    assert b["seq"][0].tolist() == [0, 0, 0, 0, 5, 6]
    assert b["seq_mask"][0].tolist() == [0, 0, 0, 0, 1, 1]
    assert b["seq_tags"][0, 5].tolist() == [6, 9, 0, 0]
    assert b["seq_tags_mask"][0, 5].tolist() == [1, 1, 0, 0]
    assert b["seq_mask"][2].sum() == 0 and b["label"].tolist() == [0.0, 1.0, 0.0]


def test_collate_truncates_tags_and_keeps_recent_behaviour() -> None:
    """Tags beyond MAX_TAGS are dropped; only the newest seq_len behaviours stay."""
    long = make_sample(9, seq=tuple(range(10)))
    b = collate([SAMPLES[1], long], SPACE)
    assert b["tags"][0].tolist() == [1, 2, 3, 4] and b["tags_mask"][0].sum() == MAX_TAGS
    assert b["seq"][1].tolist() == [4, 5, 6, 7, 8, 9]
    assert b["profile"].shape == (2, 3) and b["profile_mask"][1].sum() == 0


def test_collate_rejects_out_of_range_buckets() -> None:
    """A sample hashed for another feature space fails clearly, not inside an embedding."""
    bad = Sample("x", "u", 0, 999, (), (), (), (), 0)
    with pytest.raises(ValueError, match="item"):
        collate([bad], SPACE)


def test_collate_empty_and_index_batch() -> None:
    """No samples gives empty tensors; index_batch takes rows of every tensor."""
    assert collate([], SPACE)["item"].shape == (0,)
    b = index_batch(collate(SAMPLES, SPACE), torch.tensor([2, 0]))
    assert b["item"].tolist() == [2, 0] and b["seq"].shape == (2, 6)


RAGGED = st.lists(st.integers(0, 15), max_size=6).map(tuple)
BEHAVIOUR = st.lists(st.tuples(st.integers(0, 63), RAGGED), max_size=9)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(BEHAVIOUR, RAGGED), max_size=5))
def test_collate_and_histograms_match_plain_loops(
    rows: list[tuple[list[tuple[int, tuple[int, ...]]], tuple[int, ...]]],
) -> None:
    """Vectorised layout equals a per-value loop; histograms equal sequence_tag_histogram."""
    samples = [
        Sample(f"s{i}", "u", i, 1, p, tuple(x for x, _ in seq), tuple(t for _, t in seq), p, 0)
        for i, (seq, p) in enumerate(rows)
    ]
    b = collate(samples, SPACE)
    width = max((len(s.profile) for s in samples), default=0) or 1
    assert b["profile"].shape == (len(samples), width)
    for i, s in enumerate(samples):
        recent = list(zip(s.seq, s.seq_tags, strict=True))[-SPACE.seq_len :]
        pad = SPACE.seq_len - len(recent)
        assert b["seq"][i].tolist() == [0] * pad + [x for x, _ in recent]
        assert b["seq_mask"][i].tolist() == [0] * pad + [1] * len(recent)
        for j, (_, tags) in enumerate(recent):
            kept = list(tags[:MAX_TAGS])
            assert b["seq_tags"][i, pad + j].tolist() == kept + [0] * (MAX_TAGS - len(kept))
            assert b["seq_tags_mask"][i, pad + j].sum() == len(kept)
        assert b["profile"][i, : len(s.profile)].tolist() == list(s.profile)
        assert b["tags_mask"][i].sum() == min(len(s.tags), MAX_TAGS)
    hist = seq_tag_histograms(samples, SPACE)
    for row, s in zip(hist, samples, strict=True):
        assert row.tolist() == pytest.approx(sequence_tag_histogram(s.seq_tags, SPACE), abs=1e-6)


def test_histograms_match_feature_module() -> None:
    """Classifier histograms are exactly core.features.sequence_tag_histogram."""
    h = seq_tag_histograms(SAMPLES, SPACE)
    for row, s in zip(h, SAMPLES, strict=True):
        assert row.tolist() == pytest.approx(sequence_tag_histogram(s.seq_tags, SPACE))
    x = classifier_features(SAMPLES, SPACE)
    assert x.shape == (3, SPACE.tag_buckets + 1)
    assert x[:, -1].tolist() == pytest.approx([2 / 6, 1.0, 0.0])


def test_din_forward_shape_and_finite() -> None:
    """DIN gives one finite logit per sample, empty sequences and profiles included."""
    out = DIN(SPACE)(collate(SAMPLES, SPACE))
    assert out.shape == (3,) and torch.isfinite(out).all()


def test_din_padding_does_not_change_output() -> None:
    """A sample's logit is the same alone or padded beside longer rows, whatever sits in padding."""
    model = DIN(SPACE).eval()
    batch = collate(SAMPLES, SPACE)
    together = model(batch)
    for i, s in enumerate(SAMPLES):
        assert model(collate([s], SPACE))[0].item() == pytest.approx(together[i].item(), abs=1e-6)
    noisy = dict(batch)
    for key in ("seq", "seq_tags", "tags", "profile"):
        mask = batch[f"{key}_mask"].bool()
        junk = torch.randint_like(batch[key], 0, 16, generator=torch.Generator().manual_seed(1))
        noisy[key] = torch.where(mask, batch[key], junk)
    assert torch.allclose(model(noisy), together, atol=1e-6)


def test_din_inputs_give_the_same_logits_bit_for_bit() -> None:
    """Training lays a batch out once (`din_inputs`); the logits equal the plain batch's exactly."""
    model = DIN(SPACE, seed=3)
    batch = collate(SAMPLES, SPACE)
    assert torch.equal(model(din_inputs(batch)), model(batch))
    rows = torch.tensor([2, 0])
    assert torch.equal(model(index_batch(din_inputs(batch), rows)), model(index_batch(batch, rows)))


def test_din_attends_to_the_sequence() -> None:
    """Changing the behaviour sequence changes the prediction."""
    model = DIN(SPACE)
    a = model(collate([make_sample(0, seq=(5, 6))], SPACE))
    b = model(collate([make_sample(0, seq=(30, 40))], SPACE))
    assert not torch.allclose(a, b)


def test_seeded_init_is_deterministic_and_private() -> None:
    """The seed fixes the weights without touching torch's global RNG."""
    state = torch.random.get_rng_state()
    a, b, c = DIN(SPACE, seed=3), DIN(SPACE, seed=3), DIN(SPACE, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    assert all(torch.equal(x, y) for x, y in pairs)
    assert not torch.equal(a.item_emb.weight, c.item_emb.weight)


def test_sample_classifier_shape() -> None:
    """The classifier maps behaviour features to one logit per sample."""
    out = SampleClassifier(SPACE)(classifier_features(SAMPLES, SPACE))
    assert out.shape == (3,)


def test_state_bytes_round_trip() -> None:
    """Weights survive bytes: the loaded model predicts exactly like the original."""
    src, dst = DIN(SPACE, seed=0), DIN(SPACE, seed=1)
    data = state_to_bytes(src)
    assert isinstance(data, bytes)
    assert state_from_bytes(dst, data) is dst
    batch = collate(SAMPLES, SPACE)
    assert torch.equal(src(batch), dst(batch))
    clf = state_from_bytes(SampleClassifier(SPACE, seed=5), state_to_bytes(SampleClassifier(SPACE, seed=6)))
    assert torch.equal(clf.net[0].weight, SampleClassifier(SPACE, seed=6).net[0].weight)


def test_state_from_bytes_rejects_other_shapes() -> None:
    """Weights for another feature space do not load silently."""
    other = DIN(FeatureSpace(item_buckets=128, tag_buckets=16, profile_buckets=32, seq_len=6))
    with pytest.raises(RuntimeError):
        state_from_bytes(DIN(SPACE), state_to_bytes(other))
