"""The cloud agents on the real broker: Algorithm 1 parity, exact KNN, batch rules, N-worker and agent-batch invariance."""

from __future__ import annotations

import msgpack
import pytest

from ops.audit.checks import batch_rules, knn_recall, vector_parity
from ops.audit.exports import RunRecords, collect
from ops.chaos.cloudrun import CloudRun
from ops.datasets import load_dataset
from ops.replay.publish import plan_days
from streams.settings import Settings
from streams.topics import load_topics

GARBAGE = [
    b"\x93not a map",  # msgpack of the wrong shape
    b"\xc1",  # invalid msgpack
    msgpack.packb({"k": "up.events", "v": 9, "device_id": "d", "events": []}),  # unknown version
    msgpack.packb({"k": "up.events", "v": 1, "device_id": "d",
                   "events": [{"user_id": "u", "ts": "soon", "item_id": "i", "item_tags": [], "action": "click"}]}),
]


async def _run(settings: Settings, workers: int) -> tuple[RunRecords, dict]:
    topics = load_topics(prefix=settings.topic_prefix)
    dataset = load_dataset("synthetic", n_users=40, seed=5, days=3, events_per_user=(5, 12))
    stats = await CloudRun(settings, topics, workers=workers, garbage=GARBAGE).run(plan_days(dataset.events))
    return await collect(settings, topics), stats


@pytest.fixture
def cloud_settings(settings: Settings) -> Settings:
    """Few users, so K is small; Edge is the index, as in the default deployment."""
    return settings.replace(k_neighbours=8, index_url="edge://")


async def test_one_worker_parity_and_rules(cloud_settings: Settings) -> None:
    """Vectors = batch means, KNN = brute force, batches obey size/quota/ownership, counts reconcile."""
    run, stats = await _run(cloud_settings, workers=1)
    s = cloud_settings
    parity = vector_parity(run, s.features)
    assert parity["ok"], parity
    assert parity["max_abs_error"] <= 1e-5
    recall = knn_recall(run, s.features, s.match_window_days, s.k_neighbours)
    assert recall["checked"] > 0 and recall["mean_recall"] >= 0.95, recall
    rules = batch_rules(run, s.batch_size, s.batch_max, s.batches_per_day)
    assert rules["ok"] and rules["batches"] > 0, rules
    ingest = stats["ingest"]
    assert ingest["in"] == ingest["processed"] + ingest["dead_lettered"]
    assert ingest["dead_lettered"] == len(GARBAGE) == len(run.dead)
    for stage in ("vectors", "match", "neighbours", "assemble"):
        assert stats[stage]["in"] == stats[stage]["processed"] + stats[stage]["dead_lettered"], stage
    # nothing on the down-tunnel carries a raw id: devices and users are pseudonyms
    assert all(not b.device.startswith("dev-") for b in run.down)

    # two workers, and events one at a time instead of in batches: the same results
    two, _ = await _run(cloud_settings.replace(topic_prefix=s.topic_prefix + "x2", app_id=s.app_id + "x2",
                                               agent_batch=1), workers=2)
    assert {u: v.vector for u, v in two.vectors.items()} == {u: v.vector for u, v in run.vectors.items()}
    assert sorted((m.user, m.day, tuple(m.neighbours)) for m in two.matches) == \
        sorted((m.user, m.day, tuple(m.neighbours)) for m in run.matches)
    assert sorted((b.device, b.day, tuple(b.sample_ids)) for b in two.batches) == \
        sorted((b.device, b.day, tuple(b.sample_ids)) for b in run.batches)
