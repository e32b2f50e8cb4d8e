"""The cloud's global CTR model: train on the pool, evaluate on a later time slice (pure)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from core.features import FeatureSpace
from core.metrics import auc, logloss
from core.models import DIN, state_to_bytes
from core.sample import Sample
from core.training import TrainConfig, model_for_space, predict, train_epochs


@dataclass(frozen=True, slots=True)
class GlobalTraining:
    model: DIN
    weights: bytes
    version: str
    train_samples: int
    holdout_samples: int
    holdout_auc: float | None
    holdout_logloss: float | None


def time_split(samples: Sequence[Sample], holdout_share: float) -> tuple[list[Sample], list[Sample]]:
    """Oldest (1 - share) for training, the newest share for evaluation: no peeking ahead."""
    ordered = sorted(samples, key=lambda s: (s.ts, s.sample_id))
    cut = int(round(len(ordered) * (1 - holdout_share)))
    return ordered[:cut], ordered[cut:]


def train_global(samples: Sequence[Sample], space: FeatureSpace, cfg: TrainConfig,
                 holdout_share: float = 0.1) -> GlobalTraining:
    train, holdout = time_split(samples, holdout_share)
    model = train_epochs(model_for_space(space, cfg.seed), train, space, cfg)
    scores = predict(model, holdout, space) if holdout else None
    labels = [s.label for s in holdout]
    weights = state_to_bytes(model)
    version = "g-" + hashlib.blake2b(weights, digest_size=6).hexdigest()
    return GlobalTraining(
        model, weights, version, len(train), len(holdout),
        auc(labels, scores) if scores is not None else None,
        logloss(labels, scores) if scores is not None and len(labels) else None,
    )
