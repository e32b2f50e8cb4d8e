"""Tests for core.personalize: which DIN parameters Algorithm 3 may change."""

from __future__ import annotations

import pytest
import torch

from core.features import FeatureSpace
from core.models import DIN
from core.personalize import limit_training
from core.sample import Sample
from core.training import TrainConfig, train_gated

SPACE = FeatureSpace(64, 16, 16, 5)


def _samples(n: int, start: int = 0) -> list[Sample]:
    """Clicks on items 0-2 of 7: a taste every scope, down to the output layer, can learn."""
    return [Sample(f"s{i}", "u", i, i % 7, (i % 3,), (1, 2), ((0,), (1,)), (), int(i % 7 < 3))
            for i in range(start, start + n)]


@pytest.mark.parametrize("scope, changed", [("all", ""), ("mlp", "mlp."), ("head", "mlp.4.")])
def test_only_the_scope_moves(scope: str, changed: str) -> None:
    """Gated training keeps steps in every scope; parameters outside it stay bit-identical to the start."""
    model = DIN(SPACE, seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    limit_training(model, scope)
    res = train_gated(model, _samples(64), _samples(21, 64), SPACE, TrainConfig(lr=0.05, batch_size=8, epochs=3))
    assert res.accepted_steps > 0  # or the assertions below would hold for a model that never moved
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved and all(k.startswith(changed) for k in moved)
    if scope == "all":  # the paper's scope reaches past the MLP: embeddings and attention move too
        assert any(not k.startswith("mlp.") for k in moved)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith(changed)}


def test_unknown_scope_is_refused() -> None:
    with pytest.raises(ValueError):
        limit_training(DIN(SPACE), "embeddings")
