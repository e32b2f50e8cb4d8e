"""Tests for core.training: the global model loop, Algorithm 2's filter, Algorithm 3's gate."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import numpy as np
import pytest
import torch

import core.training as training
from core.features import FeatureSpace
from core.metrics import auc_or_fallback, logloss
from core.models import state_to_bytes
from core.sample import Sample
from core.training import (
    TrainConfig,
    centroid_scores,
    filter_matched,
    global_model_from_bytes,
    model_for_space,
    predict,
    split_matched,
    train_epochs,
    train_gated,
)

SPACE = FeatureSpace(item_buckets=256, tag_buckets=32, profile_buckets=32, seq_len=10)
LOCAL_TAGS = list(range(8))
OTHER_TAGS = list(range(16, 24))
ALL_TAGS = list(range(16))

LabelFn = Callable[[tuple[int, ...], random.Random], int]


def coin(tags: tuple[int, ...], rng: random.Random) -> int:
    """Labels unrelated to the features: nothing to learn."""
    return int(rng.random() < 0.3)


def even_tag(tags: tuple[int, ...], rng: random.Random) -> int:
    """Clicks on items whose first tag is even, with 10% label noise: learnable."""
    return int(tags[0] % 2 == 0) if rng.random() < 0.9 else int(rng.random() < 0.5)


def make_samples(
    user: str, n: int, tag_pool: list[int], rng: random.Random, label: LabelFn = coin
) -> list[Sample]:
    """Samples whose target and behaviour tags come from `tag_pool` (the user's taste)."""
    out = []
    for i in range(n):
        length = rng.randint(3, SPACE.seq_len)
        seq = tuple(rng.randrange(SPACE.item_buckets) for _ in range(length))
        seq_tags = tuple(tuple(sorted(rng.sample(tag_pool, 2))) for _ in range(length))
        tags = tuple(sorted(rng.sample(tag_pool, 2)))
        item = rng.randrange(SPACE.item_buckets)
        profile = (rng.randrange(SPACE.profile_buckets),)
        out.append(Sample(f"{user}-{i}", user, i, item, tags, seq, seq_tags, profile, label(tags, rng)))
    return out


def learnable(seed: int) -> tuple[list[Sample], list[Sample]]:
    """A training set and a local validation set with a learnable label."""
    rng = random.Random(100 + seed)
    return make_samples("me", 300, ALL_TAGS, rng, even_tag), make_samples("me", 80, ALL_TAGS, rng, even_tag)


def weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [t.clone() for t in model.state_dict().values()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# --- Algorithm 2 ---


def test_split_matched_shares() -> None:
    """The classifier gets ⌈n/3⌉ matched samples, the filter scores the rest, disjointly."""
    rng = random.Random(0)
    matched = make_samples("n", 300, ALL_TAGS, rng)
    train, scored = split_matched(matched, 1 / 3, seed=0)
    assert (len(train), len(scored)) == (100, 200)
    assert {s.sample_id for s in train} | {s.sample_id for s in scored} == {s.sample_id for s in matched}
    assert [len(part) for part in split_matched(matched[:1], 1 / 3, 0)] == [1, 0]
    assert [len(part) for part in split_matched([], 1 / 3, 0)] == [0, 0]
    with pytest.raises(ValueError):
        split_matched(matched, 1.0, 0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_filter_keeps_local_like_and_drops_foreign_samples(seed: int) -> None:
    """Matched samples with the local tag profile are mostly kept, another profile mostly dropped."""
    rng = random.Random(seed)
    local = make_samples("me", 120, LOCAL_TAGS, rng)
    alike = make_samples("alike", 90, LOCAL_TAGS, rng)
    foreign = make_samples("foreign", 90, OTHER_TAGS, rng)
    result = filter_matched(local, alike + foreign, SPACE, seed=seed)
    kept = {s.sample_id for s in result.kept}
    scored = set(result.scored_ids)

    def kept_share(group: list[Sample]) -> float:
        ids = [s.sample_id for s in group if s.sample_id in scored]
        return sum(i in kept for i in ids) / len(ids)

    assert kept_share(alike) >= 0.8
    assert kept_share(foreign) <= 0.1


def test_filter_result_is_consistent() -> None:
    """Kept = scored samples with score ≥ σ; classifier negatives are never scored or kept."""
    rng = random.Random(3)
    local = make_samples("me", 60, LOCAL_TAGS, rng)
    matched = make_samples("a", 45, LOCAL_TAGS, rng) + make_samples("b", 45, OTHER_TAGS, rng)
    r = filter_matched(local, matched, SPACE, sigma=0.2, seed=3)
    assert len(r.classifier_train_ids) == 30 and len(r.scored_ids) == 60
    assert not set(r.classifier_train_ids) & set(r.scored_ids)
    assert set(r.scores) == set(r.scored_ids)
    assert [s.sample_id for s in r.kept] == [i for i in r.scored_ids if r.scores[i] >= 0.2]


def test_filter_without_local_or_matched_keeps_nothing() -> None:
    """No local samples (nothing to learn) or no matched samples (nothing to keep): empty result."""
    rng = random.Random(4)
    local, matched = make_samples("me", 10, LOCAL_TAGS, rng), make_samples("n", 10, LOCAL_TAGS, rng)
    assert filter_matched([], matched, SPACE).kept == []
    assert filter_matched(local, [], SPACE).kept == []
    only_train = filter_matched(local, matched[:1], SPACE)
    assert only_train.kept == [] and len(only_train.classifier_train_ids) == 1


def test_centroid_scores_the_cosine_to_the_local_mean_histogram() -> None:
    """Same histogram as the local mean: 1; disjoint tags: 0; empty sequence: 0; halfway between: 1/√2."""
    def one(user: str, seq_tags: tuple[tuple[int, ...], ...]) -> Sample:
        return Sample(user, user, 0, 1, (1,), tuple(range(len(seq_tags))), seq_tags, (0,), 0)

    local = [one("l1", ((0,), (0,))), one("l2", ((0,),))]
    matched = [one("same", ((0,),)), one("other", ((5,),)), one("empty", ()), one("half", ((0,), (5,)))]
    scores = centroid_scores(local, matched, SPACE)
    assert scores[:3] == [1.0, 0.0, 0.0]
    assert scores[3] == pytest.approx(2**-0.5, abs=1e-12)
    assert centroid_scores([one("empty", ())], matched, SPACE) == [0.0] * 4


def test_centroid_filter_scores_every_matched_sample_and_keeps_the_alike() -> None:
    """No negatives are spent; the local tag profile is kept and another dropped at a middling σ."""
    rng = random.Random(6)
    local = make_samples("me", 40, LOCAL_TAGS, rng)
    alike, foreign = make_samples("alike", 30, LOCAL_TAGS, rng), make_samples("foreign", 30, OTHER_TAGS, rng)
    r = filter_matched(local, alike + foreign, SPACE, sigma=0.5, seed=1, model="centroid")
    assert r.classifier_train_ids == [] and r.scored_ids == [s.sample_id for s in alike + foreign]
    assert [s.user for s in r.kept] == ["alike"] * 30
    assert r == filter_matched(local, alike + foreign, SPACE, sigma=0.5, seed=2, model="centroid")
    with pytest.raises(ValueError, match="classifier model 'knn'"):
        filter_matched(local, alike, SPACE, model="knn")


def test_filter_is_deterministic_given_seed() -> None:
    """Same inputs and seed give the same split and scores; another seed another split."""
    rng = random.Random(5)
    local = make_samples("me", 50, LOCAL_TAGS, rng)
    matched = make_samples("a", 60, ALL_TAGS, rng)
    a, b = filter_matched(local, matched, SPACE, seed=7), filter_matched(local, matched, SPACE, seed=7)
    assert a == b
    assert filter_matched(local, matched, SPACE, seed=8).classifier_train_ids != a.classifier_train_ids


# --- Algorithm 3 ---


def assert_gate_only_rises(r: training.GatedResult, valid: list[Sample]) -> None:
    """Every accepted judgement beat the one before; the model returned is the last accepted and scores so."""
    history = [r.valid_auc_before, *r.valid_history]
    assert all(b > a for a, b in itertools.pairwise(history))
    assert r.valid_auc_after == history[-1]
    rescored = auc_or_fallback([s.label for s in valid], predict(r.model, valid, SPACE))
    assert rescored == pytest.approx(r.valid_auc_after, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_gate_never_accepts_a_step_that_lowers_validation_auc(seed: int) -> None:
    """On unlearnable labels accepted metrics only rise; the returned model scores what was reported."""
    rng = random.Random(seed)
    train, valid = make_samples("me", 300, ALL_TAGS, rng), make_samples("me", 60, ALL_TAGS, rng)
    model = model_for_space(SPACE, seed=seed)
    r = train_gated(model, train, valid, SPACE, TrainConfig(epochs=2, seed=seed))
    assert_gate_only_rises(r, valid)
    assert r.accepted_steps == len(r.valid_history) < r.total_steps == 20


@pytest.mark.parametrize("gate, epochs", [("step", 1), ("epoch", 2)])
def test_rejected_updates_leave_no_trace(monkeypatch: pytest.MonkeyPatch, gate: str, epochs: int) -> None:
    """When no step or pass can improve the metric, the model ends bit-identical to where it started."""
    monkeypatch.setattr(training, "auc_or_fallback", lambda labels, scores: 0.5)
    train, valid = learnable(0)
    model = model_for_space(SPACE)
    before = weights(model)
    r = train_gated(model, train, valid, SPACE, TrainConfig(epochs=epochs, gate=gate))
    assert (r.accepted_steps, r.total_steps) == (0, 10 * epochs)
    assert same(before, weights(model))


@pytest.mark.parametrize("seed", [0, 1])
def test_gate_improves_a_learnable_case(seed: int) -> None:
    """With a learnable label the gate accepts steps and lifts local validation AUC."""
    train, valid = learnable(seed)
    r = train_gated(model_for_space(SPACE, seed=seed), train, valid, SPACE, TrainConfig(epochs=3, seed=seed))
    assert r.accepted_steps > 0
    assert r.valid_auc_after is not None and r.valid_auc_before is not None
    assert r.valid_auc_after > r.valid_auc_before + 0.1


def test_gate_without_validation_takes_no_step() -> None:
    """No local validation samples: nothing can be judged, so the model is returned untouched."""
    train, _ = learnable(0)
    model = model_for_space(SPACE)
    before = weights(model)
    r = train_gated(model, train, [], SPACE, TrainConfig())
    assert (r.accepted_steps, r.total_steps, r.valid_auc_before, r.valid_auc_after) == (0, 0, None, None)
    assert same(before, weights(model))


@pytest.mark.parametrize("gate, moves", [("fit", True), ("skip", False)])
def test_one_class_validation_gate(gate: str, moves: bool) -> None:
    """Validation with clicks only: "fit" may step towards those labels, "skip" cannot judge ranking."""
    train, valid = learnable(0)
    valid = [v for v in valid if v.label == 1]
    model = model_for_space(SPACE)
    before = weights(model)
    r = train_gated(model, train, valid, SPACE, TrainConfig(epochs=3, one_class_gate=gate))
    assert (r.accepted_steps > 0) == moves
    assert same(before, weights(model)) != moves


def test_unknown_one_class_gate_is_refused() -> None:
    with pytest.raises(ValueError, match="one_class_gate"):
        train_gated(model_for_space(SPACE), [], [], SPACE, TrainConfig(one_class_gate="maybe"))


@pytest.mark.parametrize("seed", [0, 1])
def test_epoch_gate_judges_whole_passes(seed: int) -> None:
    """gate="epoch": one judgement per pass, accepted metrics only rise, and a learnable case improves."""
    train, valid = learnable(seed)
    cfg = TrainConfig(epochs=4, seed=seed, gate="epoch")
    r = train_gated(model_for_space(SPACE, seed=seed), train, valid, SPACE, cfg)
    assert 0 < r.accepted_steps <= 4 and r.total_steps == 4 * 10
    assert_gate_only_rises(r, valid)


@pytest.mark.parametrize("gate, epochs, patience, steps", [("step", 1, 3, 3), ("epoch", 4, 1, 10), ("epoch", 4, 2, 20)])
def test_patience_stops_after_rejections_in_a_row(monkeypatch: pytest.MonkeyPatch, gate: str, epochs: int,
                                                   patience: int, steps: int) -> None:
    """With every judgement rejected, training stops after `patience` of them: steps, or passes of 10 steps."""
    monkeypatch.setattr(training, "auc_or_fallback", lambda labels, scores: 0.5)
    train, valid = learnable(0)
    r = train_gated(model_for_space(SPACE), train, valid, SPACE, TrainConfig(epochs=epochs, gate=gate, patience=patience))
    assert (r.accepted_steps, r.total_steps) == (0, steps)


def test_patience_counts_only_rejections_in_a_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """An accepted pass resets the count: reject, accept, reject, reject stops after the fourth of six passes."""
    metrics = iter([0.5, 0.4, 0.6, 0.6, 0.5, 0.9, 0.9])  # the start, then one per pass
    monkeypatch.setattr(training, "auc_or_fallback", lambda labels, scores: next(metrics))
    train, valid = learnable(0)
    r = train_gated(model_for_space(SPACE), train, valid, SPACE, TrainConfig(epochs=6, gate="epoch", patience=2))
    assert (r.accepted_steps, r.total_steps, r.valid_history) == (1, 40, [0.6])


def test_patience_zero_is_the_paper() -> None:
    """patience 0 never stops early: the same weights as a config without it."""
    train, valid = learnable(1)
    a = train_gated(model_for_space(SPACE), train, valid, SPACE, TrainConfig(epochs=3, gate="epoch", seed=4))
    b = train_gated(model_for_space(SPACE), train, valid, SPACE, TrainConfig(epochs=3, gate="epoch", seed=4, patience=0))
    assert a.total_steps == b.total_steps == 30 and same(weights(a.model), weights(b.model))


def test_unknown_gate_is_refused() -> None:
    with pytest.raises(ValueError, match="gate 'sometimes'"):
        train_gated(model_for_space(SPACE), [], [], SPACE, TrainConfig(gate="sometimes"))


def test_gate_is_deterministic_given_seed() -> None:
    """Same initial model, data and seed give identical weights and history."""
    train, valid = learnable(1)
    runs = [train_gated(model_for_space(SPACE), train, valid, SPACE, TrainConfig(seed=9)) for _ in range(2)]
    assert runs[0].valid_history == runs[1].valid_history
    assert same(weights(runs[0].model), weights(runs[1].model))


# --- plain training, prediction, model transport ---


def test_train_epochs_fits_a_learnable_case() -> None:
    """Plain BCE training lowers training logloss and is deterministic given a seed."""
    train, _ = learnable(2)
    labels = [s.label for s in train]
    cfg = TrainConfig(epochs=3, seed=1)
    before = logloss(labels, predict(model_for_space(SPACE), train, SPACE))
    a = train_epochs(model_for_space(SPACE), train, SPACE, cfg)
    b = train_epochs(model_for_space(SPACE), train, SPACE, cfg)
    assert logloss(labels, predict(a, train, SPACE)) < before - 0.05
    assert same(weights(a), weights(b))


def test_predict_gives_probabilities_without_grad() -> None:
    """Predictions are probabilities, one per sample, and an empty input gives an empty array."""
    train, _ = learnable(0)
    p = predict(model_for_space(SPACE), train[:20], SPACE)
    assert p.shape == (20,) and np.all((p > 0) & (p < 1))
    assert predict(model_for_space(SPACE), [], SPACE).shape == (0,)


def test_global_model_from_bytes_round_trip() -> None:
    """A device rebuilds the cloud's global model from bytes and predicts identically."""
    train, _ = learnable(0)
    cloud = train_epochs(model_for_space(SPACE, seed=3), train, SPACE, TrainConfig())
    device = global_model_from_bytes(state_to_bytes(cloud), SPACE)
    assert np.array_equal(predict(cloud, train, SPACE), predict(device, train, SPACE))
