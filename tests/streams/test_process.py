"""The collector's tuning that worker and fleet processes apply at start."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from streams.process import tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_tune_gc_freezes_start_up_objects_and_collects_rarely(restored_gc: None) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    tune_gc()
    assert gc.get_freeze_count() > 0  # the objects alive at start-up leave every later scan
    assert gc.get_threshold() == (50_000, 20, 20)  # youngest generation: every 50,000 allocations, not 700
