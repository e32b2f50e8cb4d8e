"""Models in memory: loaded versions shared by a fleet's devices, and each thread's training copy."""

from __future__ import annotations

import threading
from collections import OrderedDict

from core.features import FeatureSpace
from core.models import DIN
from core.training import global_model_from_bytes
from device.modelstore import ModelFile


class ModelCache:
    """Loaded models by version (content-addressed, so safe to share); a per-thread training copy.

    Devices hold no model between rounds: most of them serve the same M0, which stays here.
    """

    def __init__(self, space: FeatureSpace, size: int = 16) -> None:
        self.space = space
        self.size = size
        self._models: OrderedDict[str, DIN] = OrderedDict()
        self._lock = threading.Lock()
        self._local = threading.local()
        self.hits = self.misses = 0

    def module(self, model: ModelFile) -> DIN:
        """A shared, read-only module for inference: never train it."""
        with self._lock:
            found = self._models.get(model.version)
            if found is not None:
                self._models.move_to_end(model.version)
                self.hits += 1
                return found
        built = global_model_from_bytes(model.weights, self.space).eval()
        with self._lock:
            self.misses += 1
            self._models[model.version] = built
            while len(self._models) > self.size:
                self._models.popitem(last=False)
        return built

    def scratch(self, model: ModelFile) -> DIN:
        """This thread's training module, loaded with `model`'s weights (training changes it in place)."""
        module: DIN | None = getattr(self._local, "module", None)
        if module is None:
            module = DIN(self.space)
            self._local.module = module
        module.load_state_dict(self.module(model).state_dict())
        return module
