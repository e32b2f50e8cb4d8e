"""Tests that progressive validation scores each event with the model the device holds at that moment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from samplegen import DAY, START
from test_runtime import act, batch, new_device, similar_samples

from core.training import predict
from device.initialmodel import fresh_initial
from device.runtime import Runtime
from device.storage import open_store
from streams.settings import Settings


async def test_events_after_a_kept_training_step_are_scored_by_the_new_model(tmp_path: Path) -> None:
    """Before the training: M0's version and scores; after a kept step: the new version, and its scores."""
    # small batches: many gated steps, so at least one raises the local validation metric and is kept
    s = Settings(state_dir=tmp_path, train_trigger=3, train_batch=2, learning_rate=0.05)
    rt = Runtime(s, fresh_initial(s.features))
    try:
        dev = new_device(rt)
        await act(dev, 0, 60)
        before = await dev.evaluations()
        out = await dev.on_batch(batch(dev, "b1", similar_samples(40, 0)))
        trained = out.trained
        assert trained is not None and trained.kept and trained.accepted_steps > 0
        assert trained.version != rt.initial.version and dev.models.current().version == trained.version
        await act(dev, 1, 30, seed=5)
        rows = await dev.evaluations()
        old, new = rows[: len(before)], rows[len(before):]
        assert old == before and {r[4] for r in old} == {rt.initial.version}
        assert new and {r[4] for r in new} == {trained.version}
        assert all(r[1] >= START + DAY for r in new)
        # the stored scores are the new model's, not M0's, for the same samples
        async with open_store(rt.pool, dev.dir, rt.limits) as store:
            local = (await store.local_split(START + 2 * DAY, 3, 7)).classifier
        samples = {x.sample_id: x for x in local}
        scored = [samples[r[0]] for r in new]
        m = rt.models.module(dev.models.current())
        m0 = rt.models.module(rt.initial)
        np.testing.assert_allclose([r[3] for r in new], predict(m, scored, rt.space), rtol=1e-6)
        assert not np.allclose([r[3] for r in new], predict(m0, scored, rt.space))
    finally:
        await rt.close()
