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


def _samples(n: int) -> list[Sample]:
    return [Sample(f"s{i}", "u", i, i % 7, (i % 3,), (1, 2), ((0,), (1,)), (), i % 2) for i in range(n)]


@pytest.mark.parametrize("scope, changed", [("all", None), ("mlp", "mlp."), ("head", "mlp.4.")])
def test_only_the_scope_moves(scope: str, changed: str | None) -> None:
    """After gated training, parameters outside the scope are bit-identical to the start."""
    model = DIN(SPACE, seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    limit_training(model, scope)
    res = train_gated(model, _samples(64), _samples(20), SPACE, TrainConfig(lr=0.05, batch_size=8, epochs=3))
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    if res.accepted_steps and changed is not None:
        assert moved and all(k.startswith(changed) for k in moved)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == ({n for n, _ in model.named_parameters()} if changed is None
                         else {n for n, _ in model.named_parameters() if n.startswith(changed)})


def test_unknown_scope_is_refused() -> None:
    with pytest.raises(ValueError):
        limit_training(DIN(SPACE), "embeddings")
