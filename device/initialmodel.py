"""The initial model M0 as a model file: the cloud's weights, or fresh ones for tests and benches."""

from __future__ import annotations

from core.features import FeatureSpace
from core.models import DIN, state_to_bytes
from device.modelstore import ModelFile, version_id


def initial_model_file(weights: bytes, origin: str = "") -> ModelFile:
    return ModelFile(version_id(0, weights), origin, 0, weights)


def fresh_initial(space: FeatureSpace, seed: int = 0) -> ModelFile:
    return initial_model_file(state_to_bytes(DIN(space, seed=seed)), f"fresh-seed-{seed}")
